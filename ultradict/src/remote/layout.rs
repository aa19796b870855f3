//! Where a remote dict's data lies in Redis, and the server-side scripts that change it.
//!
//! Every key of a dict `NAME` nested (at any depth) under the root dict `ROOT` is
//! `ultradict:{ROOT}:NAME:PART`. The hash tag `{ROOT}` puts a root and all its nested dicts in
//! one Cluster slot, so that every script below touches one slot and runs atomically:
//!
//! | part | type | holds |
//! |---|---|---|
//! | `meta` | hash | magic, format version, schema fingerprint and text, the creator's parameters (buffer size, lifetime), the instance id, the epoch, the tip of the stream, bytes used in this epoch, counters |
//! | `stream` | stream | one entry per record: id `EPOCH-SEQ`, field `r` = the framed rkyv record (the shared-memory stream's framing); and one marker per full dump, id `EPOCH-0`, field `d` |
//! | `dump` | string | the current epoch's full dump: the shared-memory dump's header and rkyv archive |
//! | `lock` | string | the writers' lock: `TOKEN HOST PID TID` of its holder, with a lease (PX) |
//! | `clients` | sorted set | attached handles (`HOST PID ID`), scored by the server time (ms) their lease ends |
//! | `register` | hash | the nested dicts' names and what each is |
//!
//! and `ultradict:{ROOT}:dicts`, the set of every dict name under the tag (which removal walks),
//! and `ultradict:index`, the set of root names (for `list` and `cleanup`; outside the tag,
//! kept apart from the atomic scripts).
//!
//! Stream ids are the positions themselves: epoch in the id's first half, the record's number
//! in the epoch in the second. A dump writes its marker and trims everything before it in the
//! same script, so a reader that fell behind finds the marker first and loads the dump.

use std::sync::LazyLock;

use redis::Script;

/// The keys of one remote dict.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `ultradict:{ROOT}:`: what every key under the root's tag starts with.
    pub(crate) tag_prefix: String,
    pub(crate) meta: String,
    pub(crate) stream: String,
    pub(crate) dump: String,
    pub(crate) lock: String,
    pub(crate) clients: String,
    pub(crate) register: String,
    /// The set of every dict name under the root's tag.
    pub(crate) dicts: String,
}

/// The set of every root dict's name.
pub(crate) const INDEX: &str = "ultradict:index";

/// Takes the root dict `name` out of [`INDEX`] after its removal, and puts it back if a new
/// dict of the name was created meanwhile: that creation's entry may have come before this
/// removal of it, and the index lies outside the dict's slot, so no script does both. An entry
/// left for a dict removed once more in between is harmless: `cleanup` drops entries of dicts
/// that are gone.
pub(crate) fn unindex(conn: &mut super::conn::Conn, name: &str) -> redis::RedisResult<()> {
    crate::fault::point("redis-removed");
    redis::cmd("SREM").arg(INDEX).arg(name).query::<i64>(conn)?;
    let recreated: bool = redis::cmd("EXISTS").arg(Keys::of(name).meta).query(conn)?;
    if recreated {
        redis::cmd("SADD").arg(INDEX).arg(name).query::<i64>(conn)?;
    }
    Ok(())
}

/// The separator of a nested dict's name from its parent's (see `naming`).
const NESTED: char = '~';

/// The root of a dict: the part of its name before the first nested separator.
pub(crate) fn root_of(name: &str) -> &str {
    name.split(NESTED).next().unwrap_or(name)
}

impl Keys {
    pub(crate) fn of(name: &str) -> Keys {
        let tag_prefix = format!("ultradict:{{{}}}:", root_of(name));
        let key = |part: &str| format!("{tag_prefix}{name}:{part}");
        Keys {
            meta: key("meta"),
            stream: key("stream"),
            dump: key("dump"),
            lock: key("lock"),
            clients: key("clients"),
            register: key("register"),
            dicts: format!("{tag_prefix}dicts"),
            tag_prefix,
        }
    }
}

/// The time on the server in milliseconds, as every lease is measured.
const NOW: &str = "local t = redis.call('TIME')\n\
                   local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// Opens or creates a dict and attaches a client, all or nothing.
///
/// KEYS: meta, stream, dump, clients, dicts, lock, register.
/// ARGV: mode (`new`, `open`, `either`), magic, format version, fingerprint, schema text,
/// requested buffer size (or empty), default buffer size, requested lifetime (or empty),
/// default lifetime, new instance id, initial dump (for a creation), client id, lease (ms), name,
/// the first epoch (random, so that a dict created again under a name never continues the old
/// one's stream ids: a handle of the old one sees a gap, fetches, and learns it was removed).
/// The instance id is drawn once per open call: a dict that already has it was created by this
/// very call (the request sent again after its reply was lost), and is the caller's creation.
pub(crate) static OPEN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
local created = 0
if kind == 'none' then
  if ARGV[1] == 'open' then return {'notfound'} end
  for i = 2, 7 do
    if i ~= 5 and redis.call('EXISTS', KEYS[i]) == 1 then
      return {'foreign', KEYS[i], 'a key of the dict exists without its meta hash'}
    end
  end
  local size = ARGV[6] ~= '' and ARGV[6] or ARGV[7]
  local lifetime = ARGV[8] ~= '' and ARGV[8] or ARGV[9]
  redis.call('HSET', KEYS[1], 'magic', ARGV[2], 'version', ARGV[3], 'fingerprint', ARGV[4],
    'schema', ARGV[5], 'buffer_size', size, 'lifetime', lifetime, 'instance', ARGV[10],
    'epoch', ARGV[15], 'tip', ARGV[15] .. '-0', 'used', 0, 'records', 0, 'dumps', 1,
    'dump_bytes', string.len(ARGV[11]), 'created_ms', now)
  redis.call('SET', KEYS[3], ARGV[11])
  redis.call('XADD', KEYS[2], ARGV[15] .. '-0', 'd', ARGV[15])
  created = 1
elseif kind ~= 'hash' then
  return {'foreign', KEYS[1], 'a ' .. kind .. ' where the meta hash should be'}
else
  local m = redis.call('HMGET', KEYS[1], 'magic', 'version', 'fingerprint', 'schema',
    'buffer_size', 'lifetime', 'instance')
  -- This very call's creation, sent again after its reply was lost: ours.
  if m[7] == ARGV[10] and m[1] == ARGV[2] then
    created = 1
  elseif ARGV[1] == 'new' then
    return {'exists'}
  end
  if m[1] ~= ARGV[2] then return {'foreign', KEYS[1], 'no ultradict magic'} end
  if m[2] ~= ARGV[3] then return {'version', m[2] or ''} end
  if m[3] ~= ARGV[4] then return {'schema', m[4] or ''} end
  if ARGV[6] ~= '' and m[5] ~= ARGV[6] then return {'param', 'buffer_size', m[5]} end
  if ARGV[8] ~= '' and m[6] ~= ARGV[8] then return {'param', 'lifetime', m[6]} end
end
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[13]), ARGV[12])
redis.call('SADD', KEYS[5], ARGV[14])
local m = redis.call('HMGET', KEYS[1], 'instance', 'buffer_size', 'lifetime', 'epoch', 'tip')
return {'ok', created, m[1], m[2], m[3], m[4], m[5], redis.call('GET', KEYS[3]),
  redis.call('XRANGE', KEYS[2], '(' .. m[4] .. '-0', '+')}
"#,
    )
});

/// The checks every write makes: the dict is still this instance, the write was not applied
/// already (sent again after its reply was lost: checked before the lock, whose lease may have
/// ended since), the lock is the writer's (if it believes it holds it) or nobody's, and the
/// stream's tip is the one the writer saw.
const WRITE_CHECKS: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'instance', 'tip', 'used', 'buffer_size', 'records')
if m[1] ~= ARGV[1] then return {'removed'} end
if ARGV[7] ~= '' and redis.call('HGET', KEYS[1], 'w:' .. ARGV[6]) == ARGV[7] then
  return {'dup'}
end
local lock = redis.call('GET', KEYS[3])
if ARGV[5] ~= '' then
  if lock ~= ARGV[5] then return {'lost', lock or ''} end
elseif lock then
  return {'locked', lock, redis.call('PTTL', KEYS[3])}
end
if m[2] ~= ARGV[2] then return {'stale', m[2]} end
"#;

/// Appends one record if the tip is the expected one (compare-and-append).
///
/// KEYS: meta, stream, lock. ARGV: instance, expected tip, the record's id, the record, the
/// writer's lock value (or empty), the writer's client id, the write's id (a write that was
/// applied but whose reply was lost, and that the client library sends again, answers `dup`).
pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{WRITE_CHECKS}{}",
        r#"
local used = tonumber(m[3]) + string.len(ARGV[4])
if used > tonumber(m[4]) then return {'full'} end
redis.call('XADD', KEYS[2], ARGV[3], 'r', ARGV[4])
redis.call('HSET', KEYS[1], 'tip', ARGV[3], 'used', used, 'records', tonumber(m[5]) + 1,
  'w:' .. ARGV[6], ARGV[7])
return {'ok'}
"#
    ))
});

/// Starts a new epoch with a full dump if the tip is the expected one: the dump, its marker,
/// the trim of the old epoch's records and the new tip, all or nothing.
///
/// KEYS: meta, stream, lock, dump. ARGV: instance, expected tip, the new epoch, the dump, the
/// writer's lock value (or empty), the writer's client id, the write's id (as for `APPEND`).
pub(crate) static DUMP: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{WRITE_CHECKS}{}",
        r#"
redis.call('SET', KEYS[4], ARGV[4])
local id = ARGV[3] .. '-0'
redis.call('XADD', KEYS[2], id, 'd', ARGV[3])
redis.call('XTRIM', KEYS[2], 'MINID', id)
redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'tip', id, 'used', 0,
  'dump_bytes', string.len(ARGV[4]), 'w:' .. ARGV[6], ARGV[7])
redis.call('HINCRBY', KEYS[1], 'dumps', 1)
return {'ok'}
"#
    ))
});

/// A Lua function: what happened since position `pos` (of epoch `epoch`): the records after
/// it, or (if the epoch moved on) the current dump and the records after it; with the tip,
/// read at one instant.
const FETCH_FN: &str = r#"
local function fetch(meta, stream, dump, instance, pos, epoch)
  local m = redis.call('HMGET', meta, 'instance', 'epoch', 'tip')
  if m[1] ~= instance then return {'removed'} end
  if m[2] ~= epoch then
    return {'dump', m[3], m[2], redis.call('GET', dump),
      redis.call('XRANGE', stream, '(' .. m[2] .. '-0', '+')}
  end
  return {'records', m[3], redis.call('XRANGE', stream, '(' .. pos, '+')}
end
"#;

/// What happened since a position (see `FETCH_FN`).
///
/// KEYS: meta, stream, dump. ARGV: instance, the position's id, its epoch.
pub(crate) static FETCH: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{FETCH_FN}return fetch(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])"
    ))
});

/// Takes the lock if it is free, and then says what happened since the caller's position
/// (see `FETCH_FN`): the holder starts from the server's state in the same round trip.
///
/// KEYS: meta, lock, stream, dump. ARGV: instance, the lock value, lease (ms), the caller's
/// position's id, its epoch. The value is drawn once per acquire call: a lock that already
/// holds it was taken by this very call (a request resent after its reply was lost), and is
/// the caller's.
pub(crate) static LOCK: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{FETCH_FN}{}",
        r#"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return {'removed'} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3])
   or redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {'ok', fetch(KEYS[1], KEYS[3], KEYS[4], ARGV[1], ARGV[4], ARGV[5])}
end
return {'held', redis.call('GET', KEYS[2]) or '', redis.call('PTTL', KEYS[2])}
"#
    ))
});

/// Gives the lock back if it is still the caller's.
///
/// KEYS: lock. ARGV: the lock value.
pub(crate) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Renews a client's lease, and the lock's if the client holds it; returns whether the lock
/// (if any was named) is still the caller's, and whether the dict is still this instance.
///
/// KEYS: meta, clients, lock. ARGV: instance, client id, lease (ms), lock value (or empty),
/// `1` for a forked child's first renewal (which joins the client). The client is added back
/// if its entry is gone: its lease ran out once (a stall, a slow reconnect) and another
/// client's detach dropped it, yet it lives and writes, and must count against removal. A
/// renewal never crosses the client's own detach (the handle waits for it before detaching,
/// `Feed::stop`).
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return {0, 0} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
local held = 1
if ARGV[4] ~= '' then
  if redis.call('GET', KEYS[3]) == ARGV[4] then
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
  else
    held = 0
  end
end
return {1, held}
"#,
    )
});

/// Detaches a client and drops the clients whose lease ran out, with their last writes' ids
/// (a crashed client's would stay in the meta hash for good); returns how many remain (or
/// `gone` if the dict is not this instance any more).
///
/// KEYS: meta, clients. ARGV: instance, client id.
pub(crate) static DETACH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return {'gone'} end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[1], 'w:' .. ARGV[2])
for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], 'w:' .. lapsed)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return {'ok', redis.call('ZCARD', KEYS[2])}
"#,
    )
});

/// Removes a dict and every dict nested under it, all or nothing; with the instance given,
/// only that instance; with `unattached`, only if no live client is attached.
///
/// KEYS: dicts, meta. ARGV: the tag's key prefix, name, instance (or empty), `1` for only if
/// unattached.
pub(crate) static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local prefix, name = ARGV[1], ARGV[2]
if ARGV[3] ~= '' and redis.call('HGET', KEYS[2], 'instance') ~= ARGV[3] then return {'gone'} end
if ARGV[4] == '1' and
   redis.call('ZCOUNT', prefix .. name .. ':clients', '(' .. now, '+inf') > 0 then
  return {'busy'}
end
local removed = {}
local nested = name .. '~'
for _, dict in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if dict == name or string.sub(dict, 1, string.len(nested)) == nested then
    for _, part in ipairs({'meta', 'stream', 'dump', 'lock', 'clients', 'register'}) do
      redis.call('DEL', prefix .. dict .. ':' .. part)
    end
    redis.call('SREM', KEYS[1], dict)
    table.insert(removed, dict)
  end
end
for _, part in ipairs({'meta', 'stream', 'dump', 'lock', 'clients', 'register'}) do
  redis.call('DEL', prefix .. name .. ':' .. part)
end
return {'ok', removed}
"#,
    )
});

/// A dict's shared state in one reply: its meta hash, live clients, lock holder and lease,
/// stream length, and the server's time.
///
/// KEYS: meta, clients, lock, stream.
pub(crate) static STATUS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return {'missing'} end
return {'ok', redis.call('HGETALL', KEYS[1]),
  redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf'),
  redis.call('GET', KEYS[3]) or '', redis.call('PTTL', KEYS[3]), redis.call('XLEN', KEYS[4])}
"#,
    )
});

/// Everything `inspect` shows of a dict, without knowing its types, in one reply.
///
/// KEYS: meta, clients, lock, stream, dump, register, dicts. ARGV: the dict's name.
pub(crate) static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {'missing'} end
if kind ~= 'hash' then return {'foreign', 'a ' .. kind .. ' where the meta hash should be'} end
if redis.call('HGET', KEYS[1], 'magic') ~= 'ultradict' then return {'foreign', 'no ultradict magic'} end
local sizes = {}
for i = 1, 6 do
  table.insert(sizes, KEYS[i])
  table.insert(sizes, redis.call('MEMORY', 'USAGE', KEYS[i]) or 0)
end
local children = {}
local nested = ARGV[1] .. '~'
for _, dict in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  if string.sub(dict, 1, string.len(nested)) == nested then table.insert(children, dict) end
end
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
  redis.call('GET', KEYS[3]) or '', now, sizes, redis.call('HGETALL', KEYS[6]), children}
"#,
    )
});

/// Records a nested dict in the register, if the dict is still this instance (a bare write
/// could create the register of a removed dict, which would make its name look foreign).
///
/// KEYS: meta, register. ARGV: instance, child name, what it is.
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"#,
    )
});
