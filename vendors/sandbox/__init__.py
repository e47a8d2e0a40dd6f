"""In-memory simulators of the vendors' server APIs."""
