-- KEYS[1] quota hash; ARGV[1] remaining, ARGV[2] refill cadence start.
-- Creates the counter only when absent; returns 1 when it did.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'remaining', ARGV[1], 'refilled_at', ARGV[2])
return 1
