//! Model-based test: random sequences of insert, remove, update, extend, clear, dump and load
//! spread over three handles in three processes, compared after every step with a `HashMap`
//! (the contents, and what each operation returned).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ultradict::{Create, UltraDict};
use ultradict_test_kit::{Running, Spawn, assert_no_segments, report, role, unique_name};

const TIMEOUT: Duration = Duration::from_secs(60);

type Dict = UltraDict<u32, u64>;

#[derive(Clone, Debug)]
enum Op {
    Insert(u32, u64),
    Remove(u32),
    Add(u32, u64),
    Extend(Vec<(u32, u64)>),
    Clear,
    Dump,
    Load(bool),
}

impl Op {
    fn encode(&self) -> String {
        match self {
            Op::Insert(k, v) => format!("insert {k} {v}"),
            Op::Remove(k) => format!("remove {k}"),
            Op::Add(k, d) => format!("add {k} {d}"),
            Op::Extend(pairs) => {
                let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("extend {}", pairs.join(","))
            }
            Op::Clear => "clear".into(),
            Op::Dump => "dump".into(),
            Op::Load(force) => format!("load {force}"),
        }
    }

    fn decode(line: &str) -> Op {
        let mut words = line.split(' ');
        let verb = words.next().unwrap_or_default();
        let mut num = || words.next().unwrap_or_default().parse::<u64>().unwrap();
        match verb {
            "insert" => Op::Insert(num() as u32, num()),
            "remove" => Op::Remove(num() as u32),
            "add" => Op::Add(num() as u32, num()),
            "extend" => Op::Extend(
                line["extend ".len()..]
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once(':').unwrap();
                        (k.parse().unwrap(), v.parse().unwrap())
                    })
                    .collect(),
            ),
            "clear" => Op::Clear,
            "dump" => Op::Dump,
            "load" => Op::Load(line.ends_with("true")),
            other => panic!("unknown op {other}"),
        }
    }

    /// Runs the operation on a handle; returns what it returned, as text.
    fn run(&self, d: &Dict) -> String {
        match self {
            Op::Insert(k, v) => format!("{:?}", d.insert(*k, *v).unwrap()),
            Op::Remove(k) => format!("{:?}", d.remove(k).unwrap()),
            Op::Add(k, delta) => format!("{}", d.update(k, |v| v.unwrap_or(0) + delta).unwrap()),
            Op::Extend(pairs) => {
                d.extend(pairs.iter().copied()).unwrap();
                "done".into()
            }
            Op::Clear => {
                d.clear().unwrap();
                "done".into()
            }
            Op::Dump => {
                d.dump().unwrap();
                "done".into()
            }
            Op::Load(force) => {
                d.load(*force).unwrap();
                "done".into()
            }
        }
    }

    /// Applies the operation to the model; returns what the handle should have returned.
    fn model(&self, model: &mut BTreeMap<u32, u64>) -> String {
        match self {
            Op::Insert(k, v) => format!("{:?}", model.insert(*k, *v)),
            Op::Remove(k) => format!("{:?}", model.remove(k)),
            Op::Add(k, delta) => {
                let value = model.entry(*k).or_insert(0);
                *value += delta;
                format!("{value}")
            }
            Op::Extend(pairs) => {
                model.extend(pairs.iter().copied());
                "done".into()
            }
            Op::Clear => {
                model.clear();
                "done".into()
            }
            Op::Dump | Op::Load(_) => "done".into(),
        }
    }
}

fn contents(d: &Dict) -> String {
    let sorted: BTreeMap<u32, u64> = d.iter().unwrap().collect();
    format!("{sorted:?}")
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u32..8;
    prop_oneof![
        4 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, u64::from(v))),
        2 => key.clone().prop_map(Op::Remove),
        2 => (key.clone(), 1u64..100).prop_map(|(k, d)| Op::Add(k, d)),
        1 => proptest::collection::vec((key, any::<u16>().prop_map(u64::from)), 0..6).prop_map(Op::Extend),
        1 => Just(Op::Clear),
        1 => Just(Op::Dump),
        1 => any::<bool>().prop_map(Op::Load),
    ]
}

/// A child process serving one handle: `open NAME`, operations, `show`, `close`.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    assert_eq!(role, "serve");
    let mut dict: Option<Dict> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("open ") {
            dict = Some(
                UltraDict::builder()
                    .name(name)
                    .create(Create::Open)
                    .open()
                    .unwrap(),
            );
            report("ok");
        } else if line == "close" {
            dict = None;
            report("ok");
        } else if line == "show" {
            report(contents(dict.as_ref().unwrap()));
        } else {
            report(Op::decode(&line).run(dict.as_ref().unwrap()));
        }
    }
}

#[test]
fn three_processes_agree_with_a_hashmap() {
    let children: Vec<Running> = (0..2)
        .map(|_| Spawn::test("child_entry", "serve").start())
        .collect();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec((0usize..3, op()), 1..40);
    let children = std::cell::RefCell::new(children);
    let result = runner.run(&strategy, |steps| {
        let mut children = children.borrow_mut();
        let name = unique_name("model");
        // 512 bytes of stream: dumps every few records, so steps cross epochs often.
        let parent: Dict = UltraDict::builder()
            .name(&name)
            .buffer_size(512)
            .open()
            .unwrap();
        for child in children.iter_mut() {
            prop_assert_eq!(child.request(&format!("open {name}"), TIMEOUT), "ok");
        }
        let mut model = BTreeMap::new();
        for (who, op) in &steps {
            // What the operation returned (an insert's or a remove's old value) as well.
            let returned = match who {
                0 => op.run(&parent),
                n => children[n - 1].request(&op.encode(), TIMEOUT),
            };
            prop_assert_eq!(returned, op.model(&mut model), "returned by {:?}", op);
            let expected = format!("{model:?}");
            prop_assert_eq!(contents(&parent), expected.clone(), "parent after {:?}", op);
            for (i, child) in children.iter_mut().enumerate() {
                prop_assert_eq!(
                    child.request("show", TIMEOUT),
                    expected.clone(),
                    "child {} after {:?}",
                    i,
                    op
                );
            }
            prop_assert_eq!(parent.len().unwrap(), model.len());
        }
        for child in children.iter_mut() {
            prop_assert_eq!(child.request("close", TIMEOUT), "ok");
        }
        drop(parent);
        assert_no_segments(&name);
        Ok(())
    });
    for child in children.into_inner() {
        child.kill();
    }
    result.unwrap();
}
