-- KEYS[1] meta hash; ARGV[1] name, ARGV[2] value. Sets it only when absent;
-- returns the stored value.
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
