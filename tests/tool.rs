//! `ultradict::tool`: a tool built for an application's own types shows its maps and derived
//! states (`get`, `dump`, Debug and JSON), on shared memory and on Redis, and leaves the
//! dicts it looks at in place.

use std::collections::HashMap;

use ultradict::rkyv::{Archive, Deserialize, Serialize};
use ultradict::tool::{Format, Location, Tool, ToolError};
use ultradict::{SharedDict, UltraDict};
use ultradict_test_kit::redis::{Backend, OnBackend, Server, leftovers};
use ultradict_test_kit::unique_name;

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(crate = ultradict::rkyv)]
pub struct Job {
    pub owner: String,
    pub tries: u32,
}

#[derive(SharedDict, Default, Debug, serde::Serialize)]
pub struct Config {
    version: u64,
    greeting: String,
}

#[derive(SharedDict, Default, Debug)]
pub struct AppState {
    counter: u64,
    #[ultradict(nested)]
    jobs: HashMap<String, u32>,
}

fn tool() -> Tool {
    Tool::new()
        .with_std_types()
        .map::<String, Job>()
        .state::<AppState>()
        .state_json::<Config>()
}

fn check_on(backend: &Backend, location: &Location) {
    let tool = tool();
    let jobs_name = unique_name("tool-jobs");
    let jobs: UltraDict<String, Job> = UltraDict::builder()
        .name(&jobs_name)
        .on(backend)
        .open()
        .unwrap();
    jobs.insert(
        "build".into(),
        Job {
            owner: "ann".into(),
            tries: 2,
        },
    )
    .unwrap();
    let shown = tool
        .get(location, &jobs_name, "build", Format::Debug)
        .unwrap();
    assert_eq!(shown, r#"Job { owner: "ann", tries: 2 }"#);
    let dumped = tool.dump(location, &jobs_name, Format::Debug).unwrap();
    assert_eq!(dumped, "\"build\" => Job { owner: \"ann\", tries: 2 }\n");
    assert!(matches!(
        tool.dump(location, &jobs_name, Format::Json),
        Err(ToolError::NoJson { .. })
    ));

    let config_name = unique_name("tool-config");
    let config = Config::builder()
        .name(&config_name)
        .on(backend)
        .open()
        .unwrap();
    config.set_version(3).unwrap();
    config.set_greeting("hello".into()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&tool.dump(location, &config_name, Format::Json).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({ "version": 3, "greeting": "hello" })
    );
    assert_eq!(
        tool.get(location, &config_name, "greeting", Format::Json)
            .unwrap(),
        "\"hello\""
    );

    let state_name = unique_name("tool-state");
    let state = AppState::builder()
        .name(&state_name)
        .on(backend)
        .open()
        .unwrap();
    state.set_counter(7).unwrap();
    state.jobs().insert("x".into(), 1).unwrap();
    let dumped = tool.dump(location, &state_name, Format::Debug).unwrap();
    assert!(dumped.contains("counter: 7"), "{dumped}");
    assert!(dumped.contains("\"x\": 1"), "{dumped}");

    // Through the command line, as `main` runs it.
    let mut args: Vec<String> = match location {
        Location::Redis(url) => vec!["--redis".into(), url.clone()],
        _ => Vec::new(),
    };
    args.extend(["dump".into(), jobs_name.clone()]);
    assert_eq!(tool.run(args).unwrap(), dumped_jobs());
    assert!(matches!(
        tool.run(["get".to_owned()]),
        Err(ToolError::Usage(_))
    ));

    // Looking left every dict in place.
    assert_eq!(jobs.len().unwrap(), 1);
    assert_eq!(state.counter().unwrap(), 7);
    drop((jobs, config, state));
    for name in [&jobs_name, &config_name] {
        if !backend.is_remote() {
            assert_eq!(leftovers(backend, name), Vec::<String>::new());
        }
    }
}

fn dumped_jobs() -> String {
    "\"build\" => Job { owner: \"ann\", tries: 2 }\n".to_owned()
}

#[test]
fn a_tool_for_own_types_shows_maps_and_states_on_shared_memory() {
    check_on(&Backend::Shm, &Location::default());
}

#[test]
fn a_tool_for_own_types_shows_maps_and_states_on_redis() {
    let server = Server::start();
    check_on(
        &Backend::Redis(server.url()),
        &Location::Redis(server.url()),
    );
}
