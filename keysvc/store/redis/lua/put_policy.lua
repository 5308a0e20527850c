-- KEYS[1] event stream, KEYS[2] index of policy ids, KEYS[3] current version,
-- KEYS[4] hash of all versions.
-- ARGV[1] retention, ARGV[2] event JSON, ARGV[3] policy_id, ARGV[4] version,
-- ARGV[5] policy JSON, ARGV[6] 'create' or 'put'; then optionally the request
-- mark (see mark_check.lua).
-- @mark_check 4
local version = tonumber(ARGV[4])
local current = redis.call('GET', KEYS[3])
if ARGV[6] == 'create' then
  if current then return {'EXISTS'} end
else
  if not current then return {'NOT_FOUND'} end
  if cjson.decode(current)['version'] ~= version - 1 then return {'CONFLICT'} end
end
redis.call('SET', KEYS[3], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
-- @mark_write
return {'OK', redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])}
