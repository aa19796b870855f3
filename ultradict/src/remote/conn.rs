//! Connections to the Redis server (or Cluster) a remote dict lives on: where it is, how long
//! to wait for it, and the one conversion of the client's errors into [`Error::Backend`], which
//! names the address and what was being done.

use std::time::Duration;

use redis::{ConnectionLike, RedisResult};

use crate::error::{Error, Result};

/// Where a remote dict lives and how long to wait for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// One URL (`redis://host:port/db`), or a Cluster's seed nodes.
    pub(crate) urls: Vec<String>,
    /// The URLs are seed nodes of a Redis Cluster.
    pub(crate) cluster: bool,
    /// How long to wait to connect and for each reply.
    pub(crate) timeout: Duration,
    /// How long a client's and a lock holder's lease runs unless renewed.
    pub(crate) lease: Duration,
}

/// The default wait for a connection or a reply.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default lease of an attached client and of a lock holder.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(3);

impl Target {
    pub(crate) fn single(url: String) -> Self {
        Target {
            urls: vec![url],
            cluster: false,
            timeout: DEFAULT_TIMEOUT,
            lease: DEFAULT_LEASE,
        }
    }

    pub(crate) fn cluster(urls: Vec<String>) -> Self {
        Target {
            urls,
            cluster: true,
            ..Target::single(String::new())
        }
    }

    /// The server's address as errors name it.
    pub(crate) fn address(&self) -> String {
        self.urls.join(",")
    }

    /// The error of `doing` something that failed with the client's `err`.
    pub(crate) fn error(&self, doing: impl Into<String>, err: &redis::RedisError) -> Error {
        Error::Backend {
            address: self.address(),
            doing: doing.into(),
            detail: err.to_string(),
        }
    }

    /// Opens a connection that waits at most `timeout` for the server, and `reply` for each
    /// reply (longer than a blocking read's own block time, for the subscriber).
    pub(crate) fn connect(&self, reply: Duration) -> Result<Conn> {
        let doing = "connecting";
        if self.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
                .connection_timeout(self.timeout)
                .response_timeout(reply)
                .retries(2)
                .build()
                .map_err(|e| self.error(doing, &e))?;
            let conn = client.get_connection().map_err(|e| self.error(doing, &e))?;
            return Ok(Conn::Cluster(Box::new(conn)));
        }
        let url = self.urls.first().map(String::as_str).unwrap_or_default();
        let client = redis::Client::open(url).map_err(|e| self.error(doing, &e))?;
        let conn = client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| self.error(doing, &e))?;
        conn.set_read_timeout(Some(reply))
            .and_then(|()| conn.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.error(doing, &e))?;
        Ok(Conn::Single(Box::new(conn)))
    }
}

/// A connection to one server, or to a Cluster (which routes each command by its key's slot:
/// every key of one dict shares a slot through its hash tag).
pub(crate) enum Conn {
    Single(Box<redis::Connection>),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    fn inner(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(conn) => conn.as_mut(),
            Conn::Cluster(conn) => conn.as_mut(),
        }
    }

    /// Whether the connection can still be used after an error.
    pub(crate) fn is_usable(&self) -> bool {
        match self {
            Conn::Single(conn) => conn.is_open(),
            Conn::Cluster(_) => true,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<redis::Value> {
        if crate::fault::redis_resend() && is_script(cmd) {
            // The first reply is lost (see `fault::redis_resend`).
            self.inner().req_packed_command(cmd)?;
        }
        self.inner().req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<redis::Value>> {
        self.inner().req_packed_commands(cmd, offset, count)
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<redis::Value> {
        if crate::fault::redis_resend() && is_script(&cmd.get_packed_command()) {
            // The first reply is lost (see `fault::redis_resend`).
            self.inner().req_command(cmd)?;
        }
        self.inner().req_command(cmd)
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        self.inner().check_connection()
    }

    fn is_open(&self) -> bool {
        match self {
            Conn::Single(conn) => conn.is_open(),
            Conn::Cluster(conn) => conn.is_open(),
        }
    }
}

/// Whether a packed command runs a script (`EVALSHA` or `EVAL`; the name is the first
/// argument, after the array and bulk-string headers).
fn is_script(cmd: &[u8]) -> bool {
    let head = &cmd[..cmd.len().min(32)];
    head.windows(4).any(|w| w.eq_ignore_ascii_case(b"EVAL"))
}

/// A connection that is opened on first use and again after it broke: a handle survives a
/// server restart.
pub(crate) struct Link {
    target: Target,
    reply: Duration,
    conn: Option<Conn>,
}

impl Link {
    pub(crate) fn new(target: Target, reply: Duration) -> Self {
        Link {
            target,
            reply,
            conn: None,
        }
    }

    /// Where the connection goes.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `f` on the connection (opened if need be); a connection that broke is dropped,
    /// to be opened again next time. Errors name `doing`.
    pub(crate) fn run<T>(
        &mut self,
        doing: &str,
        f: impl FnOnce(&mut Conn) -> RedisResult<T>,
    ) -> Result<T> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            slot => slot.insert(self.target.connect(self.reply)?),
        };
        match f(conn) {
            Ok(value) => Ok(value),
            Err(err) => {
                if err.is_io_error()
                    || err.is_timeout()
                    || err.is_connection_dropped()
                    || !conn.is_usable()
                {
                    self.conn = None;
                }
                Err(self.target.error(doing, &err))
            }
        }
    }
}
