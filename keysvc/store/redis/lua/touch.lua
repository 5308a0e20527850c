-- KEYS[1] last-use time; ARGV[1] a time. Keeps the later of the two.
local current = tonumber(redis.call('GET', KEYS[1]))
if not current or current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
