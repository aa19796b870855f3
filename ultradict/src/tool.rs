//! A command-line tool that shows what is inside dicts: `get NAME KEY` and `dump NAME`, for
//! the key and value types it was built with. The `ultradict` command is one such tool, built
//! with the standard types ([`Tool::with_std_types`]); an application builds its own for its
//! types in a few lines:
//!
//! ```no_run
//! # #[derive(ultradict::SharedDict, Default, Debug)] struct AppState { counter: u64 }
//! fn main() -> std::process::ExitCode {
//!     ultradict::tool::Tool::new()
//!         .with_std_types()
//!         .map::<String, u64>()
//!         .state::<AppState>()
//!         .main()
//! }
//! ```
//!
//! ```console
//! $ my-tool dump jobs                     # every entry, through Debug
//! $ my-tool dump jobs --json              # as JSON, for types registered with `map_json`
//! $ my-tool get jobs done                 # one value (the key is parsed from the text)
//! $ my-tool --redis redis://10.0.0.5:6379/ get jobs done
//! ```
//!
//! A dict's types are recognized from the schema stored in it (e.g.
//! `UltraDict<alloc::string::String, u64>`). A dict of types the tool does not know gets a
//! message that says how to build a tool that does. The tool's handles leave without applying
//! the dict's lifetime: looking at a dict never removes it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use crate::error::Error;
use crate::map::{Key, UltraDict, Value};
use crate::options::Create;
use crate::structs::SharedDict;

/// Where the dicts a tool looks at live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Shared memory, in this directory (/dev/shm unless the dicts' creator chose another).
    Shm(PathBuf),
    /// A Redis server (`redis://host:port/db`).
    #[cfg(feature = "redis")]
    Redis(String),
    /// A Redis Cluster, by some of its masters' URLs.
    #[cfg(feature = "redis")]
    RedisCluster(Vec<String>),
}

impl Default for Location {
    fn default() -> Self {
        Location::Shm(crate::os::SHM_DIR.into())
    }
}

/// How values are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Through `Debug`.
    Debug,
    /// As JSON (types registered with [`Tool::map_json`] or [`Tool::state_json`]).
    Json,
}

/// Why a tool command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// Opening or reading the dict failed.
    #[error(transparent)]
    Dict(#[from] Error),
    /// The dict holds types this tool was not built with.
    #[error(
        "dict {name:?} holds {schema}, which this tool does not know. Build a tool that knows \
         it, in a binary of the crate that defines the types (feature \"tool\"):\n\n    \
         ultradict::tool::Tool::new().with_std_types(){hint}.main()\n"
    )]
    UnknownTypes {
        /// The dict's name.
        name: String,
        /// Its schema, as stored.
        schema: String,
        /// The registration that would fit, e.g. `.map::<my::Key, my::Value>()`.
        hint: String,
    },
    /// The key given on the command line does not parse as the dict's key type.
    #[error("{key:?} is not a key of dict {name:?} ({detail})")]
    BadKey {
        /// The dict's name.
        name: String,
        /// The key as given.
        key: String,
        /// Why it did not parse.
        detail: String,
    },
    /// The dict has no value under the key.
    #[error("dict {name:?} has no key {key}")]
    NoSuchKey {
        /// The dict's name.
        name: String,
        /// The key as given.
        key: String,
    },
    /// JSON was asked for types registered without it.
    #[error(
        "the types of dict {name:?} were registered without serde: register them with \
         map_json / state_json for --json"
    )]
    NoJson {
        /// The dict's name.
        name: String,
    },
    /// The command line is not one the tool understands.
    #[error("{0}")]
    Usage(String),
}

impl ToolError {
    /// The exit code the `ultradict` command documents for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ToolError::Dict(Error::NotFound { .. }) | ToolError::NoSuchKey { .. } => 3,
            ToolError::Dict(
                Error::Foreign { .. } | Error::VersionMismatch { .. } | Error::NotReady { .. },
            ) => 4,
            ToolError::Dict(Error::PermissionDenied { .. }) => 5,
            ToolError::UnknownTypes { .. } => 6,
            ToolError::Usage(_) | ToolError::BadKey { .. } | ToolError::NoJson { .. } => 2,
            ToolError::Dict(Error::InvalidName { .. }) => 2,
            ToolError::Dict(_) => 1,
        }
    }
}

type Shown = Result<String, ToolError>;
type GetFn = fn(&Location, &str, &str, Format) -> Shown;
type DumpFn = fn(&Location, &str, Format) -> Shown;

/// One registered kind of dict: how to show it.
struct Known {
    get: GetFn,
    dump: DumpFn,
}

/// A tool that knows some key and value types; see the module docs.
#[derive(Default)]
pub struct Tool {
    /// Maps by their stored schema text.
    maps: BTreeMap<String, Known>,
    /// Derived states, tried in turn (their schema text is their struct's).
    states: Vec<Known>,
}

impl Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("maps", &self.maps.keys().collect::<Vec<_>>())
            .field("states", &self.states.len())
            .finish()
    }
}

/// Points `options` at `location`.
fn locate(options: &mut crate::options::Options, location: &Location) {
    match location {
        Location::Shm(dir) if dir.as_os_str() == crate::os::SHM_DIR => {}
        Location::Shm(dir) => options.dir = Some(dir.clone()),
        #[cfg(feature = "redis")]
        Location::Redis(url) => {
            options.remote = Some(crate::remote::Target::single(url.clone()));
        }
        #[cfg(feature = "redis")]
        Location::RedisCluster(urls) => {
            options.remote = Some(crate::remote::Target::cluster(urls.clone()));
        }
    }
}

/// Opens the existing dict `name` at `location` as `UltraDict<K, V>`.
fn open_map<K: Key, V: Value>(location: &Location, name: &str) -> Result<UltraDict<K, V>, Error> {
    let mut builder = UltraDict::<K, V>::builder().name(name).create(Create::Open);
    locate(&mut builder.options, location);
    builder.options.observer = true;
    // A nested dict's name, as `status` and `list` show it, opens too.
    builder.options.child = name.contains(crate::naming::SEPARATOR);
    builder.open()
}

/// The entries of the map `name`, sorted by their keys' `Debug` text; the handle leaves
/// without deciding on removal.
fn entries<K: Key + Debug, V: Value>(
    location: &Location,
    name: &str,
) -> Result<Vec<(K, V)>, Error> {
    let dict = open_map::<K, V>(location, name)?;
    // Left without deciding on removal however the read went (a failed read used to leave
    // through the ordinary close, which applies the dict's lifetime).
    let read = dict.to_hashmap();
    crate::handle::drop_keeping(dict);
    let mut all: Vec<(K, V)> = read?.into_iter().collect();
    all.sort_by_cached_key(|(key, _)| format!("{key:?}"));
    Ok(all)
}

fn one<K: Key + Debug, V: Value>(
    location: &Location,
    name: &str,
    key: K,
    shown: &str,
) -> Result<V, ToolError> {
    let dict = open_map::<K, V>(location, name)?;
    let value = dict.get(&key);
    crate::handle::drop_keeping(dict);
    value?.ok_or_else(|| ToolError::NoSuchKey {
        name: name.to_owned(),
        key: shown.to_owned(),
    })
}

fn debug_get<K: Key + Debug + FromStr<Err: std::fmt::Display>, V: Value + Debug>(
    location: &Location,
    name: &str,
    key: &str,
    format: Format,
) -> Shown {
    if format == Format::Json {
        return Err(ToolError::NoJson {
            name: name.to_owned(),
        });
    }
    let parsed = key.parse::<K>().map_err(|e| ToolError::BadKey {
        name: name.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(format!("{:?}", one::<K, V>(location, name, parsed, key)?))
}

fn debug_dump<K: Key + Debug, V: Value + Debug>(
    location: &Location,
    name: &str,
    format: Format,
) -> Shown {
    if format == Format::Json {
        return Err(ToolError::NoJson {
            name: name.to_owned(),
        });
    }
    Ok(entries::<K, V>(location, name)?
        .iter()
        .map(|(key, value)| format!("{key:?} => {value:?}\n"))
        .collect())
}

/// Parses a key given on the command line as JSON; a text that is not JSON is taken as a
/// JSON string (so `get jobs done` works for `String` keys).
fn json_key<K: serde::de::DeserializeOwned>(name: &str, key: &str) -> Result<K, ToolError> {
    serde_json::from_str(key)
        .or_else(|_| serde_json::from_value(serde_json::Value::String(key.to_owned())))
        .map_err(|e| ToolError::BadKey {
            name: name.to_owned(),
            key: key.to_owned(),
            detail: e.to_string(),
        })
}

fn to_json(value: &impl serde::Serialize) -> Shown {
    serde_json::to_string_pretty(value)
        .map_err(|e| ToolError::Dict(Error::corrupt("value", format!("as JSON: {e}"))))
}

fn json_get<K, V>(location: &Location, name: &str, key: &str, format: Format) -> Shown
where
    K: Key + Debug + serde::Serialize + serde::de::DeserializeOwned,
    V: Value + Debug + serde::Serialize,
{
    let value = one::<K, V>(location, name, json_key(name, key)?, key)?;
    match format {
        Format::Debug => Ok(format!("{value:?}")),
        Format::Json => to_json(&value),
    }
}

fn json_dump<K, V>(location: &Location, name: &str, format: Format) -> Shown
where
    K: Key + Debug + serde::Serialize,
    V: Value + Debug + serde::Serialize,
{
    let all = entries::<K, V>(location, name)?;
    if format == Format::Debug {
        return Ok(all
            .iter()
            .map(|(key, value)| format!("{key:?} => {value:?}\n"))
            .collect());
    }
    // An object when every key is a JSON string, else a list of [key, value] pairs.
    let pairs: Vec<(serde_json::Value, &V)> = all
        .iter()
        .map(|(key, value)| Ok((serde_json::to_value(key)?, value)))
        .collect::<Result<_, serde_json::Error>>()
        .map_err(|e| ToolError::Dict(Error::corrupt("key", format!("as JSON: {e}"))))?;
    if pairs.iter().all(|(key, _)| key.is_string()) {
        let object: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(key, value)| {
                let key = key.as_str().unwrap_or_default().to_owned();
                Ok((key, serde_json::to_value(value)?))
            })
            .collect::<Result<_, serde_json::Error>>()
            .map_err(|e| ToolError::Dict(Error::corrupt("value", format!("as JSON: {e}"))))?;
        return to_json(&object);
    }
    to_json(&pairs)
}

/// Opens the existing derived state `name` at `location`.
fn open_state<S: SharedDict + Default>(
    location: &Location,
    name: &str,
) -> Result<S::Handle, Error> {
    let mut builder = S::builder().name(name).create(Create::Open);
    locate(&mut builder.options, location);
    builder.options.observer = true;
    // A nested dict's name, as `status` and `list` show it, opens too.
    builder.options.child = name.contains(crate::naming::SEPARATOR);
    builder.open()
}

/// A snapshot of the state `name`.
fn state_snapshot<S: SharedDict + Default>(location: &Location, name: &str) -> Result<S, Error> {
    let handle = open_state::<S>(location, name)?;
    let snapshot = S::__snapshot(&handle);
    crate::handle::drop_keeping(handle);
    snapshot
}

/// `get` on a state registered without JSON: only once the state is known to be this one
/// (another registered state may be the dict's), it says what to do instead.
fn state_get_debug<S: SharedDict + Default>(
    location: &Location,
    name: &str,
    _: &str,
    _: Format,
) -> Shown {
    state_snapshot::<S>(location, name)?;
    Err(ToolError::Usage(format!(
        "{name:?} is a derived state: it has fields, not keys; `dump` shows them (`get` on a \
         state needs state_json)"
    )))
}

fn state_dump<S: SharedDict + Default + Debug>(
    location: &Location,
    name: &str,
    format: Format,
) -> Shown {
    let snapshot = state_snapshot::<S>(location, name)?;
    if format == Format::Json {
        return Err(ToolError::NoJson {
            name: name.to_owned(),
        });
    }
    Ok(format!("{snapshot:#?}\n"))
}

fn state_json_get<S>(location: &Location, name: &str, field: &str, format: Format) -> Shown
where
    S: SharedDict + Default + Debug + serde::Serialize,
{
    let snapshot = serde_json::to_value(state_snapshot::<S>(location, name)?)
        .map_err(|e| ToolError::Dict(Error::corrupt(name, format!("as JSON: {e}"))))?;
    let value = snapshot.get(field).ok_or_else(|| ToolError::NoSuchKey {
        name: name.to_owned(),
        key: field.to_owned(),
    })?;
    match format {
        Format::Json => to_json(value),
        Format::Debug => Ok(value.to_string()),
    }
}

fn state_json_dump<S>(location: &Location, name: &str, format: Format) -> Shown
where
    S: SharedDict + Default + Debug + serde::Serialize,
{
    let snapshot = state_snapshot::<S>(location, name)?;
    match format {
        Format::Json => to_json(&snapshot),
        Format::Debug => Ok(format!("{snapshot:#?}\n")),
    }
}

fn schema_of<K: Key, V: Value>() -> String {
    <crate::map::MapSchema<K, V> as crate::schema::Schema>::fingerprint().description
}

/// Registers `UltraDict<K, V>` for every `(K, V)` of the lists, with JSON.
macro_rules! std_maps {
    ($tool:ident; [$($key:ty),*]; $values:tt) => {
        $(let $tool = std_maps!(@values $tool; $key; $values);)*
    };
    (@values $tool:ident; $key:ty; [$($value:ty),*]) => {
        $tool$(.map_json::<$key, $value>())*
    };
}

impl Tool {
    /// A tool that knows no types yet.
    pub fn new() -> Self {
        Tool::default()
    }

    /// Adds maps of the standard types, with JSON: keys `String`, `u64` or `i64`; values
    /// `String`, `u64`, `i64`, `f64`, `bool`, `Vec<u8>`, `Option<String>`, `Option<u64>`,
    /// `Vec<String>` or `Vec<u64>`. Each pair compiles the whole engine once more, so the
    /// list stays short; other types take one line each ([`map_json`](Self::map_json)).
    pub fn with_std_types(self) -> Self {
        let tool = self;
        std_maps!(tool; [String, u64, i64]; [
            String, u64, i64, f64, bool, Vec<u8>, Option<String>, Option<u64>,
            Vec<String>, Vec<u64>
        ]);
        tool
    }

    /// Knows `UltraDict<K, V>`, shown through `Debug`; `get`'s key is parsed with `FromStr`.
    pub fn map<K, V>(mut self) -> Self
    where
        K: Key + Debug + FromStr<Err: std::fmt::Display>,
        V: Value + Debug,
    {
        self.maps.insert(
            schema_of::<K, V>(),
            Known {
                get: debug_get::<K, V>,
                dump: debug_dump::<K, V>,
            },
        );
        self
    }

    /// Knows `UltraDict<K, V>`, shown through `Debug` or as JSON (`--json`); `get`'s key is
    /// parsed as JSON (or taken as a string).
    pub fn map_json<K, V>(mut self) -> Self
    where
        K: Key + Debug + serde::Serialize + serde::de::DeserializeOwned,
        V: Value + Debug + serde::Serialize,
    {
        self.maps.insert(
            schema_of::<K, V>(),
            Known {
                get: json_get::<K, V>,
                dump: json_dump::<K, V>,
            },
        );
        self
    }

    /// Knows the derived state `S`, shown through `Debug` (`dump` only: a state has fields,
    /// not keys).
    pub fn state<S: SharedDict + Default + Debug>(mut self) -> Self {
        self.states.push(Known {
            get: state_get_debug::<S>,
            dump: state_dump::<S>,
        });
        self
    }

    /// Knows the derived state `S`, shown through `Debug` or as JSON; `get NAME FIELD` shows
    /// one field.
    pub fn state_json<S: SharedDict + Default + Debug + serde::Serialize>(mut self) -> Self {
        self.states.push(Known {
            get: state_json_get::<S>,
            dump: state_json_dump::<S>,
        });
        self
    }

    /// The schema stored in the dict `name`.
    fn schema(location: &Location, name: &str) -> Result<String, Error> {
        Ok(match location {
            Location::Shm(dir) => crate::inspect::inspect_in(dir, name)?.schema,
            #[cfg(feature = "redis")]
            Location::Redis(url) => crate::RedisServer::new(url.clone()).inspect(name)?.schema,
            #[cfg(feature = "redis")]
            Location::RedisCluster(urls) => {
                crate::RedisServer::cluster(urls.clone())
                    .inspect(name)?
                    .schema
            }
        })
    }

    /// Runs `pick`'s function for the kind of the dict `name`: the map of its stored schema,
    /// or the derived state that opens it.
    fn on_dict(&self, location: &Location, name: &str, run: impl Fn(&Known) -> Shown) -> Shown {
        let schema = Self::schema(location, name)?;
        if let Some(known) = self.maps.get(&schema) {
            return run(known);
        }
        if !schema.starts_with("UltraDict<") {
            for known in &self.states {
                match run(known) {
                    Err(ToolError::Dict(Error::SchemaMismatch { .. })) => continue,
                    other => return other,
                }
            }
        }
        let hint = match schema
            .strip_prefix("UltraDict<")
            .and_then(|rest| rest.strip_suffix('>'))
        {
            Some(types) => format!(".map::<{types}>()"),
            None => format!(
                ".state::<{}>()",
                schema.split([' ', '{']).next().unwrap_or("YourState")
            ),
        };
        Err(ToolError::UnknownTypes {
            name: name.to_owned(),
            schema,
            hint,
        })
    }

    /// `get NAME KEY`: the value under `key` (a field, for a derived state registered with
    /// JSON).
    ///
    /// # Errors
    /// See [`ToolError`].
    pub fn get(&self, location: &Location, name: &str, key: &str, format: Format) -> Shown {
        self.on_dict(location, name, |known| {
            (known.get)(location, name, key, format)
        })
    }

    /// `dump NAME`: every entry (or field).
    ///
    /// # Errors
    /// See [`ToolError`].
    pub fn dump(&self, location: &Location, name: &str, format: Format) -> Shown {
        self.on_dict(location, name, |known| (known.dump)(location, name, format))
    }

    /// Runs one command line (without the program name): `[--dir DIR | --redis URL |
    /// --redis-cluster URL...] get NAME KEY [--json]` or `... dump NAME [--json]`; returns
    /// what to print.
    ///
    /// # Errors
    /// See [`ToolError`]; [`ToolError::Usage`] for a command line it does not understand.
    pub fn run(&self, args: impl IntoIterator<Item = String>) -> Shown {
        let mut location = Location::default();
        let mut format = Format::Debug;
        let mut words = Vec::new();
        let mut args = args.into_iter();
        let usage = || {
            ToolError::Usage(
                "usage: [--dir DIR | --redis URL | --redis-cluster URL...] \
                 (get NAME KEY | dump NAME) [--json]"
                    .to_owned(),
            )
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--json" => format = Format::Json,
                "--dir" => location = Location::Shm(args.next().ok_or_else(usage)?.into()),
                #[cfg(feature = "redis")]
                "--redis" => location = Location::Redis(args.next().ok_or_else(usage)?),
                #[cfg(feature = "redis")]
                "--redis-cluster" => {
                    let url = args.next().ok_or_else(usage)?;
                    match &mut location {
                        Location::RedisCluster(urls) => urls.push(url),
                        other => *other = Location::RedisCluster(vec![url]),
                    }
                }
                _ if arg.starts_with("--") => return Err(usage()),
                _ => words.push(arg),
            }
        }
        match words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["get", name, key] => self.get(&location, name, key, format),
            ["dump", name] => self.dump(&location, name, format),
            _ => Err(usage()),
        }
    }

    /// Runs the process's command line, prints the result, and returns the exit code (0, or
    /// [`ToolError::exit_code`] with the message on stderr).
    pub fn main(self) -> ExitCode {
        match self.run(std::env::args().skip(1)) {
            Ok(shown) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(shown.as_bytes());
                if !shown.ends_with('\n') {
                    let _ = out.write_all(b"\n");
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(err.exit_code())
            }
        }
    }
}
