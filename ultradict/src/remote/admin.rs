//! Looking at the dicts on a Redis server without knowing their types, and removing them:
//! what the `ultradict --redis URL` command-line tool does, as a library.

use parking_lot::Mutex;
use redis::Value;

use super::conn::{Link, Target};
use super::layout::{self, Keys};
use super::{Holder, bytes, host, number, text};
use crate::error::{Error, Result};
use crate::inspect::{Attached, DictInfo, Listed, Nested};
use crate::options::Lifetime;
use crate::status::LockHolder;

/// A Redis server (or Valkey, or a Redis Cluster) that dicts live on, looked at from outside:
/// list, inspect, remove and clean up its dicts without knowing their key and value types.
///
/// ```no_run
/// # fn main() -> ultradict::Result<()> {
/// let server = ultradict::RedisServer::new("redis://127.0.0.1:6379/");
/// for listed in server.list()? {
///     println!("{}: {:?}", listed.name, listed.info.map(|info| info.epoch));
/// }
/// server.cleanup(false)?; // removes dicts whose every client is gone
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisServer {
    link: Mutex<Link>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("address", &self.link.lock().target().address())
            .finish()
    }
}

impl RedisServer {
    /// The server at `url` (`redis://host:port/db`). Connects on first use.
    pub fn new(url: impl Into<String>) -> Self {
        Self::on(Target::single(url.into()))
    }

    /// The Redis Cluster that `nodes` (URLs of some of its masters) belong to.
    pub fn cluster<U: Into<String>>(nodes: impl IntoIterator<Item = U>) -> Self {
        Self::on(Target::cluster(nodes.into_iter().map(Into::into).collect()))
    }

    fn on(target: Target) -> Self {
        let timeout = target.timeout;
        RedisServer {
            link: Mutex::new(Link::new(target, timeout)),
        }
    }

    fn run<T>(
        &self,
        doing: &str,
        f: impl FnOnce(&mut super::conn::Conn) -> redis::RedisResult<T>,
    ) -> Result<T> {
        self.link.lock().run(doing, f)
    }

    /// Every root dict on the server (nested dicts are listed in their root's
    /// [`DictInfo::children`]), sorted by name.
    ///
    /// # Errors
    /// [`Error::Backend`] if the server cannot be asked.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut names: Vec<String> = self.run("listing dicts", |conn| {
            redis::cmd("SMEMBERS").arg(layout::INDEX).query(conn)
        })?;
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let info = self.inspect(&name);
                Listed { name, info }
            })
            .collect())
    }

    /// What the dict `name` (a root or nested dict) holds and who uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Foreign`] if something else lies under its keys;
    /// [`Error::InvalidName`]; [`Error::Backend`].
    pub fn inspect(&self, name: &str) -> Result<DictInfo> {
        check_name(name)?;
        let keys = Keys::of(name);
        let reply: Vec<Value> = self.run("inspecting a dict", |conn| {
            layout::INSPECT
                .key(&keys.meta)
                .key(&keys.clients)
                .key(&keys.lock)
                .key(&keys.stream)
                .key(&keys.dump)
                .key(&keys.register)
                .key(&keys.dicts)
                .arg(name)
                .invoke(conn)
        })?;
        match text(reply.first()).as_deref() {
            Some("ok") => {}
            Some("missing") => {
                return Err(Error::NotFound {
                    name: name.to_owned(),
                });
            }
            _ => {
                return Err(Error::Foreign {
                    segment: keys.meta.clone(),
                    reason: text(reply.get(1)).unwrap_or_default(),
                });
            }
        }
        Ok(self.info(name, &reply))
    }

    fn info(&self, name: &str, reply: &[Value]) -> DictInfo {
        let pairs = |at: usize| -> Vec<(String, Value)> {
            match reply.get(at) {
                Some(Value::Array(items)) => items
                    .chunks(2)
                    .filter_map(|pair| Some((text(pair.first())?, pair.get(1)?.clone())))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let meta = pairs(1);
        let field = |key: &str| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let now: u64 = number(reply.get(4)).unwrap_or(0);
        let here = host();
        let attached: Vec<Attached> = pairs(2)
            .into_iter()
            .map(|(client, expiry)| {
                let mut parts = client.split(' ');
                let host = parts.next().unwrap_or_default().to_owned();
                let pid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                Attached {
                    pid,
                    same_pid_namespace: host == here,
                    alive: number::<u64>(Some(&expiry)).unwrap_or(0) > now,
                    sleepers: 0,
                    host: Some(host),
                }
            })
            .collect();
        let lock = text(reply.get(3)).unwrap_or_default();
        let lock_holder = (!lock.is_empty()).then(|| {
            let holder = Holder::parse(&lock);
            LockHolder {
                pid: holder.pid,
                same_pid_namespace: holder.host == here,
                since: None,
                host: Some(holder.host.to_owned()),
            }
        });
        let segments = pairs(5)
            .into_iter()
            .filter_map(|(key, size)| Some((key, number::<u64>(Some(&size)).filter(|&n| n > 0)?)))
            .collect();
        let mut children: Vec<String> = match reply.get(7) {
            Some(Value::Array(items)) => items.iter().filter_map(|v| text(Some(v))).collect(),
            _ => Vec::new(),
        };
        children.sort();
        let register = pairs(6);
        let nested = children
            .iter()
            .filter(|child| !child[name.len() + 1..].contains('~'))
            .map(|child| Nested {
                name: child.clone(),
                what: register
                    .iter()
                    .find(|(k, _)| k == child)
                    .and_then(|(_, v)| text(Some(v))),
            })
            .collect();
        let records = number(field("records")).unwrap_or(0);
        let dumps = number(field("dumps")).unwrap_or(0);
        DictInfo {
            name: name.to_owned(),
            schema: text(field("schema")).unwrap_or_default(),
            directory: self.link.lock().target().address(),
            segments,
            buffer_size: number(field("buffer_size")).unwrap_or(0),
            buffer_used: number(field("used")).unwrap_or(0),
            full_dump_size: None,
            epoch: number(field("epoch")).unwrap_or(0),
            records,
            dumps,
            dump_bytes: field("dump_bytes")
                .and_then(|v| number(Some(v)))
                .or_else(|| bytes(field("dump")).map(|b| b.len() as u64))
                .unwrap_or(0),
            lifetime: number(field("lifetime"))
                .and_then(Lifetime::from_raw)
                .unwrap_or_default(),
            attached_count: attached.iter().filter(|a| a.alive).count() as u32,
            attached,
            sleepers: 0,
            removing: false,
            lock_holder_alive: lock_holder.as_ref().map(|_| true),
            lock_holder,
            lock_recoveries: 0,
            changes: (records + dumps) as u32,
            children,
            nested,
        }
    }

    /// Removes the dict `name` (whatever its instance) and every dict nested in it; returns
    /// whether there was one. Handles still open get [`Error::Removed`] on their next write.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Backend`].
    pub fn unlink(&self, name: &str) -> Result<bool> {
        self.remove(name, false)
    }

    fn remove(&self, name: &str, unattached: bool) -> Result<bool> {
        check_name(name)?;
        let keys = Keys::of(name);
        let reply: Vec<Value> = self.run("removing a dict", |conn| {
            layout::REMOVE
                .key(&keys.dicts)
                .key(&keys.meta)
                .arg(&keys.tag_prefix)
                .arg(name)
                .arg("")
                .arg(if unattached { "1" } else { "0" })
                .invoke(conn)
        })?;
        let removed = matches!(reply.get(1), Some(Value::Array(names)) if !names.is_empty());
        if text(reply.first()).as_deref() == Some("ok") && layout::root_of(name) == name {
            self.run("unindexing a dict", |conn| layout::unindex(conn, name))?;
        }
        Ok(removed)
    }

    /// Removes every root dict that nobody will remove: not `Persistent`, and no client whose
    /// lease still runs (all crashed, or closed without the last close removing it); with
    /// `dry_run`, only says which. A client that attaches meanwhile keeps its dict: the
    /// check and the removal are one script. Returns the names removed (or that would be).
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub fn cleanup(&self, dry_run: bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for listed in self.list()? {
            let orphaned = match &listed.info {
                Ok(info) => info.orphaned(),
                // Indexed, but gone: only the index entry is left.
                Err(Error::NotFound { .. }) => {
                    if !dry_run {
                        self.remove(&listed.name, true)?;
                    }
                    continue;
                }
                Err(_) => false,
            };
            if orphaned && (dry_run || self.remove(&listed.name, true)?) {
                removed.push(listed.name);
            }
        }
        Ok(removed)
    }
}

/// Checks a root or nested dict name.
fn check_name(name: &str) -> Result<()> {
    if name.contains('~') {
        crate::naming::validate_child(name)
    } else {
        crate::naming::validate(name)
    }
}
