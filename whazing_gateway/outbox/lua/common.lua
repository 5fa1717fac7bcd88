local P = ARGV[1]
local NONE = '\0'
local function dkey(id) return P .. 'd:' .. id end
local function duekey(t) return P .. 'due:' .. t end
local function heldkey(t) return P .. 'held:' .. t end
local function qkey(t, ok) return P .. 'q:' .. t .. '\31' .. ok end
local function score_of(id)
  local v = redis.call('HMGET', dkey(id), 'next_at', 'lease_until')
  if v[2] and tonumber(v[2]) > tonumber(v[1]) then return v[2] end
  return v[1]
end
local function rescore(id, t, s)
  redis.call('ZADD', duekey(t), 'XX', s, id)
  redis.call('ZADD', heldkey(t), 'XX', s, id)
end
local function drop_lease(id, owner)
  if owner then redis.call('SREM', P .. 'own:' .. owner, id) end
  redis.call('HDEL', dkey(id), 'lease_until', 'owner')
end
-- a finished delivery leaves the schedule; the next of its ticket becomes claimable
local function unlink(id, t, ok)
  redis.call('ZREM', duekey(t), id)
  redis.call('ZREM', heldkey(t), id)
  if ok then
    local q = qkey(t, ok)
    local head = redis.call('LINDEX', q, 0)
    redis.call('LREM', q, 1, id)
    if head == id then
      local nh = redis.call('LINDEX', q, 0)
      if nh then
        redis.call('ZREM', heldkey(t), nh)
        redis.call('ZADD', duekey(t), score_of(nh), nh)
      end
    end
  end
end
