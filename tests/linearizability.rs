//! Linearizability of real histories: several processes get, insert, remove and add on a few
//! keys of one dict while its small stream forces epoch switches, one of them is SIGKILLed in
//! the middle (its operation in flight becomes pending), and the recorded history (calls and
//! answers on the machine's monotonic clock) is checked against a register per key. The
//! scenario is `ultradict_test_kit::linearizability::record`; `cargo run --release --bin
//! lincheck` runs a longer one.

use ultradict_test_kit::linearizability::{self, Op};
use ultradict_test_kit::redis::{BACKEND_VAR, Backend, leftovers};
use ultradict_test_kit::{Spawn, arg, role, unique_name};

const OPS: u64 = 300;

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    match role.as_str() {
        "worker" => linearizability::worker(
            &arg("NAME"),
            arg("SEED").parse().unwrap(),
            arg("OPS").parse().unwrap(),
            &Backend::from_env(),
        ),
        other => panic!("unknown role {other}"),
    }
}

fn record(name: &str, backend: &Backend) -> linearizability::Recorded {
    linearizability::record(name, OPS, 1, backend, |seed, ops| {
        Spawn::test("child_entry", "worker")
            .raw_env(BACKEND_VAR, backend.to_env())
            .env("NAME", name)
            .env("SEED", seed)
            .env("OPS", ops)
            .start()
    })
}

#[test]
fn histories_from_several_processes_with_a_kill_are_linearizable() {
    linearizable_on(&Backend::Shm);
}

#[test]
fn histories_on_redis_with_a_kill_are_linearizable() {
    // Gets are `sync()` then `get()` there (see `linearizability::worker`).
    linearizable_on(&Backend::redis());
}

fn linearizable_on(backend: &Backend) {
    let name = unique_name("linearizable");
    let recorded = record(&name, backend);
    let answered = recorded
        .history
        .iter()
        .filter(|e| e.answer.is_some())
        .count() as u64;
    assert!(answered >= 4 * OPS + OPS / 3, "{answered} answered");
    assert!(recorded.epochs > 1, "a 2 KiB stream switches epochs");
    if let Err(why) = linearizability::check(&recorded.history) {
        panic!("not linearizable: {why}");
    }
    if !backend.is_remote() {
        assert_eq!(leftovers(backend, &name), Vec::<String>::new());
    }
}

#[test]
fn a_wrong_answer_in_a_real_history_is_caught() {
    // The checker must fail on the histories this dict produces once one answer is wrong: an
    // increment that answers a value no order of the operations could give (as a lost or
    // doubled update would).
    let name = unique_name("linearizable-broken");
    let mut history = record(&name, &Backend::Shm).history;
    assert!(linearizability::check(&history).is_ok());
    let add = history
        .iter()
        .position(|e| matches!(e.op, Op::Add(_)) && e.answer.is_some())
        .expect("some increment answered");
    history[add].answer = Some(Some(u64::MAX / 2));
    assert!(linearizability::check(&history).is_err());
    assert_eq!(leftovers(&Backend::Shm, &name), Vec::<String>::new());
}
