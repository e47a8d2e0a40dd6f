"""The live page `imshift serve` shows at / (plain HTML, one script, one style)."""
