"""The Redis side of the per-second schedule in workers/ratelimit.py: its two
Lua scripts, run on Redis's own clock (one round trip per reservation)."""

# A schedule is stale, and forgotten, when its last write is more than
# CLOCK_SLACK seconds in the future (written on a clock that was ahead, say
# before a correction, or by another Redis after a failover), or when its
# next free slot is further ahead than the rate explains: each process
# reserves at most about 2 x HORIZON (0.2 s) ahead, and a call heavier than
# the rate goes alone (weight 1,000 at 100/s: 10 s), so STALE_AHEAD seconds
# beyond what the queued weight needs, over the rate factor (a cut rate
# spreads the same calls wider), is no live schedule. Clocks that differ by
# less than CLOCK_SLACK keep one schedule: a short wait, never a burst.
STALE_AHEAD = 30.0
CLOCK_SLACK = 5.0
MIN_FACTOR = 0.1  # the lowest rate factor an over-limit reply leaves

# Mirror of `_Slots.reserve` / `_Slots.slow_down` in workers/ratelimit.py; keep the two in step.
# State (a hash): win, pos = the next free place in the middles of the
# windows (an epoch second and the share of it used: GCRA's theoretical
# arrival time); cw, cn, cn1 = the weight units counted in windows cw and
# cw + 1; bnext = the earliest time of the next guard-band call; paused =
# no call before this time; factor, fat = the rate factor and when it was
# set; cut = when it was last cut; unext = the earliest time of the next urgent
# call in a window's middle; urate, uat = urgent units a second lately, as
# of uat (decaying over URGENT_TAU seconds).
STATE = """
local t = redis.call('TIME')
local sec, frac = tonumber(t[1]), tonumber(t[2]) / 1e6
local now = sec + frac
local st = redis.call('HMGET', KEYS[1], 'win', 'pos', 'cw', 'cn', 'cn1', 'bnext',
                      'paused', 'factor', 'fat', 'cut', 'unext', 'urate', 'uat')
local win, pos = tonumber(st[1]) or 0, tonumber(st[2]) or 0
local cw, cn, cn1 = tonumber(st[3]) or 0, tonumber(st[4]) or 0, tonumber(st[5]) or 0
local bnext = tonumber(st[6]) or 0
local paused, factor = tonumber(st[7]) or 0, tonumber(st[8]) or 1
local fat, cut = tonumber(st[9]) or 0, tonumber(st[10]) or 0
local unext, urate, uat = tonumber(st[11]) or 0, tonumber(st[12]) or 0, tonumber(st[13]) or 0
-- `need`: the seconds the queued weight takes at the rate (see _Slots.forget_if_stale)
local function forget_if_stale(need)
  local f = math.min(math.max(factor, MIN_FACTOR), 1)
  if fat <= now + CLOCK_SLACK and math.max(win + pos, unext) - now <= (STALE_AHEAD + need) / f then
    return
  end
  win, pos, cw, cn, cn1, bnext, cut, unext, urate, uat = 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
  if paused > now + STALE_AHEAD then paused = 0 end
  factor, fat = f, now
end
local function recover()
  factor = math.min(1, factor + math.max(0, now - fat) * tonumber(ARGV[1]))
end
"""

# Urgent calls (workers/ratelimit.py `urgent`) across processes: an urgent
# call takes the earliest place in a window with room, ahead of slots
# booked before it, and while urgent calls were seen lately on a key (their
# rate u, a moving average over about URGENT_TAU seconds, at least one a
# second) the others are paced at the rate u leaves and leave room in each
# window for the urgent calls still to come in it: their mean and
# URGENT_HEADROOM x its square root (their count varies about that much),
# at most URGENT_MOST of the limit (the others always keep a little).
URGENT_TAU = 1.0
URGENT_HEADROOM = 3.0
URGENT_MOST = 0.9

STATE = (STATE.replace("MIN_FACTOR", repr(MIN_FACTOR)).replace("CLOCK_SLACK", repr(CLOCK_SLACK))
         .replace("STALE_AHEAD", repr(STALE_AHEAD)))

RESERVE = STATE + """
-- one slot per weight in ARGV[6..], in order: one round trip for a batch of
-- calls, the first ARGV[5] of them urgent
local limit, rate, guard = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local hurried = tonumber(ARGV[5])
local queued = 0
for i = 6, #ARGV do queued = queued + tonumber(ARGV[i]) end
forget_if_stale(queued / rate)
recover()
local function used(w)
  if w == cw then return cn elseif w == cw + 1 then return cn1 elseif w > cw + 1 then return 0 end
  return math.huge
end
local function count(w, units)
  if w > cw + 1 then
    if w - 1 == cw + 1 then cn = cn1 else cn = 0 end
    cn1 = 0; cw = w - 1
  end
  if w == cw then cn = cn + units elseif w == cw + 1 then cn1 = cn1 + units end
end
local earliest = math.max(now, paused)
local cap = math.floor(limit * factor + 1e-9)
-- guard-band calls only while both windows they may land in stay under the
-- share of the rate that fits in the middles (see _Slots.reserve)
local band_room = math.floor(rate * factor * (1 - 2 * guard) + 1e-9)
local function urgent_rate()
  return urate * math.exp(-math.max(0, now - uat) / URGENT_TAU)
end
-- room for the urgent calls arriving in the next `seconds` at `ur` a second (see _Slots._room)
local function room(ur, seconds)
  local mean = ur * math.min(math.max(0, seconds), 1)
  return math.min(math.floor(mean + URGENT_HEADROOM * math.sqrt(mean)), math.floor(cap * URGENT_MOST))
end
local out, furthest = {}, 0
for i = 6, #ARGV do
  local weight = tonumber(ARGV[i])
  local hurry = i - 6 < hurried
  local es = math.floor(earliest)
  local ef = earliest - es
  local delay, latest = nil, nil
  if hurry then urate = urgent_rate() + weight / URGENT_TAU; uat = now end
  -- a guard band straddles each window boundary b: [b - guard, b + guard)
  local b = nil
  if ef < guard then b = es elseif ef >= 1 - guard then b = es + 1 end
  if b ~= nil and weight <= band_room and (hurry or win < b or (win == b and pos <= 0)) then
    local at = math.max(earliest, bnext)
    if at < b + guard and used(b - 1) + weight <= band_room and used(b) + weight <= band_room then
      count(b - 1, weight); count(b, weight)
      bnext = at + weight / (rate * factor)
      delay, latest = at - now, b + 1 - guard / 2 - now
    end
  end
  if delay == nil and hurry then
    -- the earliest window with room, ahead of what the others booked (see _Slots._urgent)
    local at = math.max(earliest, unext)
    local w = math.floor(at)
    at = at - w
    if at < guard then at = guard elseif at >= 1 - guard then w = w + 1; at = guard end
    while true do
      local u = used(w)
      if cw + 1 < w and w < win then u = math.huge end
      if u == 0 or u + weight <= cap then break end
      w = w + 1; at = guard
    end
    count(w, weight)
    unext = w + at + weight * (1 - 2 * guard) / (rate * factor)
    delay = (w - sec) + at - frac
    latest = (w - sec) + 1 - guard / 2 - frac
  end
  if delay == nil then
    -- the others leave room in each window for the urgent calls still to
    -- come in it, paced at the rate their mean leaves
    local ur = urgent_rate()
    if ur < 1 then ur = 0 end
    local pace = rate * factor
    if cap > 0 then pace = pace * (1 - math.min(ur / cap, URGENT_MOST)) end
    -- the earliest place: now (or the pause's end) mapped into the schedule
    local ep = math.min(math.max((ef - guard) / (1 - 2 * guard), 0), 1)
    if ep >= 1 then es = es + 1; ep = 0 end
    if win < es or (win == es and pos < ep) then win = es; pos = ep end
    -- never more than the limit in one window (a call heavier than that goes alone)
    local u = used(win)
    while u > 0 and u + weight + room(ur, win + 1 - guard - now) > cap do
      win = win + 1; pos = 0; u = used(win)
    end
    local start_win, start_pos = win, pos
    count(start_win, weight)
    pos = pos + weight / pace
    if pos >= 1 then local whole = math.floor(pos); win = win + whole; pos = pos - whole end
    delay = (start_win - sec) + guard + start_pos * (1 - 2 * guard) - frac
    latest = (start_win - sec) + 1 - guard / 2 - frac
  end
  out[#out + 1] = string.format('%.6f', delay)
  out[#out + 1] = string.format('%.6f', latest)
  furthest = math.max(furthest, delay)
end
redis.call('HSET', KEYS[1], 'win', win, 'pos', pos, 'cw', cw, 'cn', cn, 'cn1', cn1,
           'bnext', bnext, 'paused', paused, 'factor', factor, 'fat', now, 'cut', cut,
           'unext', unext, 'urate', urate, 'uat', uat)
redis.call('EXPIRE', KEYS[1], math.ceil(math.max(furthest, paused - now, 0)) + 60)
return out
"""

RESERVE = (RESERVE.replace("URGENT_TAU", repr(URGENT_TAU)).replace("URGENT_HEADROOM", repr(URGENT_HEADROOM))
           .replace("URGENT_MOST", repr(URGENT_MOST)))

SLOW_DOWN = STATE + """
local pause = tonumber(ARGV[2])
forget_if_stale(0)
recover()
-- one cut per burst of over-limit replies: the echoes of one overrun don't compound
if now - cut >= math.max(pause, 1) then
  factor = math.max(tonumber(ARGV[3]), factor * tonumber(ARGV[4])); cut = now
end
paused = math.max(paused, now + pause)
redis.call('HSET', KEYS[1], 'win', win, 'pos', pos, 'cw', cw, 'cn', cn, 'cn1', cn1, 'bnext', bnext,
           'paused', paused, 'factor', factor, 'fat', now, 'cut', cut,
           'unext', unext, 'urate', urate, 'uat', uat)
redis.call('EXPIRE', KEYS[1], math.ceil(pause) + 60)
return 1
"""
