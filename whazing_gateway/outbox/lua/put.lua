local now = ARGV[2]
local tolerance = tonumber(ARGV[3])  -- ORDER_TOLERANCE_S
local added = 0
local i = 4
while i + 9 <= #ARGV do
  local id, t, ok = ARGV[i], ARGV[i + 1], ARGV[i + 4]
  local dk = dkey(id)
  if redis.call('EXISTS', dk) == 0 then
    local seq = redis.call('INCR', P .. 'seq')
    redis.call('HSET', dk, 'id', id, 'target', t, 'event_id', ARGV[i + 2], 'event_type', ARGV[i + 3],
      'body', ARGV[i + 5], 'created_at', ARGV[i + 6], 'status', 'pending', 'attempts', 0,
      'round_attempts', 0, 'next_at', now, 'accepted_at', now, 'updated_at', now, 'seq', seq)
    if ok ~= NONE then redis.call('HSET', dk, 'order_key', ok) end
    if ARGV[i + 7] ~= NONE then redis.call('HSET', dk, 'ticket_id', ARGV[i + 7]) end
    if ARGV[i + 8] ~= NONE then redis.call('HSET', dk, 'flow_id', ARGV[i + 8]) end
    redis.call('SADD', P .. 'targets', t)
    redis.call('ZADD', P .. 'all', ARGV[i + 6], id)
    if ok ~= NONE then
      -- Replicas infer one ticket's events concurrently, so acceptance order can differ from
      -- event order: go before not-yet-started deliveries of the ticket that happened clearly
      -- later (by more than the tolerance: closer ones keep acceptance order).
      local q = qkey(t, ok)
      local cat = tonumber(ARGV[i + 6]) + tolerance
      local before = nil
      local k = redis.call('LLEN', q) - 1
      local steps = 0
      while k >= 0 and steps < 64 do
        local other = redis.call('LINDEX', q, k)
        local oh = redis.call('HMGET', dkey(other), 'created_at', 'attempts', 'lease_until')
        if tonumber(oh[1]) > cat and tonumber(oh[2]) == 0 and not oh[3] then
          before = other
        else
          break
        end
        k = k - 1
        steps = steps + 1
      end
      local settled = ARGV[i + 9]
      redis.call('HSET', dk, 'next_at', settled)
      if before then redis.call('LINSERT', q, 'BEFORE', before, id) else redis.call('RPUSH', q, id) end
      if redis.call('LINDEX', q, 0) == id then
        if before then  -- the old head (unstarted) steps back
          redis.call('ZREM', duekey(t), before)
          redis.call('ZADD', heldkey(t), score_of(before), before)
        end
        redis.call('ZADD', duekey(t), settled, id)
      else
        redis.call('ZADD', heldkey(t), settled, id)
      end
    else
      redis.call('ZADD', duekey(t), now, id)
    end
    added = added + 1
  end
  i = i + 10
end
return added
