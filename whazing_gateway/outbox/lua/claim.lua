local now, limit, lease, owner = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local ordered = ARGV[6] == '1'
-- probe: held items qualify (no due time); least recently tried first (updated_at, then seq)
local probe = ARGV[7] == '1'
local caps = {}
if #ARGV > 7 then
  for j = 8, #ARGV, 2 do caps[#caps + 1] = {ARGV[j], tonumber(ARGV[j + 1])} end
else
  for _, t in ipairs(redis.call('SMEMBERS', P .. 'targets')) do caps[#caps + 1] = {t, limit} end
end
local function older(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[4] < b[4]
end
local cands = {}
for _, tc in ipairs(caps) do
  local t, cap = tc[1], math.min(tc[2], limit)
  if cap > 0 then
    local got = {}
    local zs = {duekey(t)}
    if not ordered then zs[2] = heldkey(t) end
    for _, zk in ipairs(zs) do
      if probe then
        for _, id in ipairs(redis.call('ZRANGE', zk, 0, -1)) do
          local v = redis.call('HMGET', dkey(id), 'seq', 'updated_at', 'lease_until')
          if not v[1] then
            redis.call('ZREM', zk, id)
          elseif not v[3] or tonumber(v[3]) <= tonumber(now) then
            got[#got + 1] = {id, tonumber(v[2]), zk, tonumber(v[1])}
          end
        end
      else
        local r = redis.call('ZRANGEBYSCORE', zk, '-inf', now, 'WITHSCORES', 'LIMIT', 0, cap)
        for k = 1, #r, 2 do
          local seq = redis.call('HGET', dkey(r[k]), 'seq')
          if seq then
            got[#got + 1] = {r[k], tonumber(r[k + 1]), zk, tonumber(seq)}
          else
            redis.call('ZREM', zk, r[k])  -- a record deleted under us: forget it
          end
        end
      end
    end
    table.sort(got, older)
    for k = 1, math.min(cap, #got) do cands[#cands + 1] = got[k] end
  end
end
table.sort(cands, older)
local out = {}
for k = 1, math.min(limit, #cands) do
  local id, zk = cands[k][1], cands[k][3]
  local dk = dkey(id)
  local prev = redis.call('HGET', dk, 'owner')
  if prev and prev ~= owner then redis.call('SREM', P .. 'own:' .. prev, id) end
  redis.call('HSET', dk, 'lease_until', lease, 'owner', owner)
  redis.call('ZADD', zk, lease, id)
  redis.call('SADD', P .. 'own:' .. owner, id)
  out[#out + 1] = redis.call('HGETALL', dk)
end
return out
