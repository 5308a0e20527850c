-- The request mark a lifecycle script may take last: one more KEYS entry (the
-- mark) and four more ARGV (mode 'new' or 'replace', mark JSON, expiry as
-- epoch ms, the writer's clock). 'new' refuses the whole write when the mark
-- is held and not expired by the writer's clock.
local mark, margv = nil, nil
if #KEYS > {keys} then mark, margv = KEYS[#KEYS], #ARGV - 3 end
if mark and ARGV[margv] == 'new' then
  local held = redis.call('GET', mark)
  if held and cjson.decode(held)['expires_at'] > tonumber(ARGV[margv + 3]) then
    return {'DUPLICATE'}
  end
end
