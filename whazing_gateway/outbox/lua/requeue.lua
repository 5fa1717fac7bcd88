local now = ARGV[2]
local n = 0
for j = 3, #ARGV do
  local id = ARGV[j]
  local dk = dkey(id)
  local cur = redis.call('HMGET', dk, 'status', 'target', 'order_key', 'owner', 'seq')
  if cur[1] then
    local t, ok = cur[2], cur[3]
    drop_lease(id, cur[4])
    redis.call('HSET', dk, 'next_at', now, 'round_attempts', 0, 'updated_at', now)
    if cur[1] == 'pending' then
      rescore(id, t, now)
    else
      redis.call('HSET', dk, 'status', 'pending')
      redis.call('SADD', P .. 'targets', t)
      if ok then
        -- back into its ticket's queue at its acceptance position
        local q = qkey(t, ok)
        local items = redis.call('LRANGE', q, 0, -1)
        local seq = tonumber(cur[5])
        local before = nil
        for _, other in ipairs(items) do
          if (tonumber(redis.call('HGET', dkey(other), 'seq')) or 0) > seq then before = other; break end
        end
        if before then redis.call('LINSERT', q, 'BEFORE', before, id) else redis.call('RPUSH', q, id) end
        if redis.call('LINDEX', q, 0) == id then
          if #items > 0 then
            redis.call('ZREM', duekey(t), items[1])
            redis.call('ZADD', heldkey(t), score_of(items[1]), items[1])
          end
          redis.call('ZADD', duekey(t), now, id)
        else
          redis.call('ZADD', heldkey(t), now, id)
        end
      else
        redis.call('ZADD', duekey(t), now, id)
      end
    end
    n = n + 1
  end
end
return n
