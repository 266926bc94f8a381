//! Table tests of `decide`: a simulated clock, one sample a second, and the target following
//! every decision, as the reconciler applies them.

use super::*;

fn scaling(min: u32, max: u32, per_replica: u32, down_delay: u32, zero_after: u32) -> Autoscaling {
    Autoscaling {
        min_capacity: min,
        max_capacity: max,
        target_inflight_per_replica: per_replica,
        scale_down_delay_secs: down_delay,
        scale_to_zero_after_secs: zero_after,
    }
}

fn windows(stable: u64, panic: u64) -> Windows {
    Windows {
        stable: Duration::from_secs(stable),
        panic: Duration::from_secs(panic),
    }
}

/// One second of the simulation: calls in flight, queued, calls admitted during it, replicas
/// still starting.
#[derive(Clone, Copy)]
struct Tick {
    in_flight: u32,
    queued: u32,
    new_calls: u64,
    starting: u32,
}

fn load(in_flight: u32) -> Tick {
    Tick {
        in_flight,
        queued: 0,
        new_calls: 0,
        starting: 0,
    }
}

struct Case {
    name: &'static str,
    autoscaling: Autoscaling,
    windows: Windows,
    replicas: u32,
    ticks: Vec<Tick>,
    /// (second, new target in replicas, reason) of every decision.
    want: Vec<(u64, u32, &'static str)>,
}

fn run(case: &Case) -> Vec<(u64, u32, &'static str)> {
    let t0 = Instant::now();
    let mut state = ScaleState::default();
    let mut replicas = case.replicas;
    let mut calls = 0;
    let mut out = Vec::new();
    for (i, tick) in case.ticks.iter().enumerate() {
        calls += tick.new_calls;
        let signals = Signals {
            demand: Demand {
                in_flight: tick.in_flight,
                queued: tick.queued,
                calls,
            },
            replicas,
            starting: tick.starting,
            generation: 1,
            now: t0 + Duration::from_secs(i as u64),
        };
        if let Some(d) = decide(
            &case.autoscaling,
            1,
            &case.windows,
            &mut state,
            &signals,
            true,
        ) {
            assert_eq!(d.from, replicas, "{}: at {i}", case.name);
            assert_ne!(d.to, d.from, "{}: at {i}", case.name);
            assert_eq!(d.direction == Direction::Up, d.to > d.from);
            replicas = d.to;
            out.push((i as u64, d.to, d.reason));
        }
    }
    out
}

fn repeat(tick: Tick, n: usize) -> Vec<Tick> {
    vec![tick; n]
}

fn concat(parts: Vec<Vec<Tick>>) -> Vec<Tick> {
    parts.into_iter().flatten().collect()
}

#[test]
fn table() {
    let cases = vec![
        Case {
            // 16 calls at once on 4 per replica: the panic window takes it up within a second
            // and to the max in five, long before the 60 s window would.
            name: "a burst scales up on the panic window",
            autoscaling: scaling(0, 4, 4, 60, 300),
            windows: windows(60, 6),
            replicas: 1,
            ticks: concat(vec![repeat(load(0), 10), repeat(load(16), 10)]),
            want: vec![(11, 2, "burst"), (13, 3, "burst"), (15, 4, "burst")],
        },
        Case {
            // A steady rise is followed by the stable window too (here equal to the panic
            // window's want, so it is load).
            name: "steady load scales on the stable window",
            autoscaling: scaling(0, 4, 4, 60, 300),
            windows: windows(4, 4),
            replicas: 1,
            ticks: concat(vec![repeat(load(4), 3), repeat(load(8), 6)]),
            want: vec![(3, 2, "load")],
        },
        Case {
            // 8 calls for 5 s, none for 5 s, over and over: up at once, and never down, since
            // the lower want never holds for the 30 s delay.
            name: "flapping load keeps its replicas",
            autoscaling: scaling(0, 4, 4, 30, 300),
            windows: windows(10, 2),
            replicas: 1,
            ticks: (0..12)
                .flat_map(|_| concat(vec![repeat(load(8), 5), repeat(load(0), 5)]))
                .collect(),
            want: vec![(0, 2, "load")],
        },
        Case {
            // After the load, down once the stable window has forgotten it and the delay has
            // passed; one replica stays until the deployment has been idle for the
            // scale-to-zero time, then it goes.
            name: "quiet scales down after the delay, idle to zero",
            autoscaling: scaling(0, 4, 4, 5, 30),
            windows: windows(6, 2),
            replicas: 2,
            ticks: concat(vec![repeat(load(8), 5), repeat(load(0), 40)]),
            want: vec![(13, 1, "quiet"), (34, 0, "idle")],
        },
        Case {
            name: "never above max",
            autoscaling: scaling(0, 3, 1, 5, 30),
            windows: windows(6, 2),
            replicas: 1,
            ticks: repeat(load(100), 10),
            want: vec![(0, 3, "load")],
        },
        Case {
            // min 2: idle for long never takes it below two.
            name: "never below min",
            autoscaling: scaling(2, 4, 4, 1, 1),
            windows: windows(2, 1),
            replicas: 4,
            ticks: repeat(load(0), 30),
            want: vec![(1, 2, "quiet")],
        },
        Case {
            name: "a target outside new bounds is brought back",
            autoscaling: scaling(0, 2, 4, 60, 300),
            windows: windows(60, 6),
            replicas: 5,
            ticks: repeat(load(0), 3),
            want: vec![(0, 2, "bounds")],
        },
        Case {
            // Demand fell while a replica was still starting: nothing is removed until it is
            // ready, then the scale-down happens (the delay has long passed).
            name: "no scale-down while a replica is starting",
            autoscaling: scaling(0, 4, 4, 2, 300),
            windows: windows(2, 1),
            replicas: 2,
            ticks: concat(vec![
                repeat(
                    Tick {
                        starting: 1,
                        ..load(0)
                    },
                    20,
                ),
                repeat(load(0), 2),
            ]),
            want: vec![(20, 1, "quiet")],
        },
        Case {
            // At zero, one queued call wakes it at once; short calls (never seen in flight,
            // only counted) keep it from going back to zero; then idle takes it there.
            name: "zero: woken by a call, kept by short calls, idle again",
            autoscaling: scaling(0, 2, 4, 5, 10),
            windows: windows(4, 2),
            replicas: 0,
            ticks: concat(vec![
                repeat(load(0), 3),
                vec![Tick {
                    queued: 1,
                    new_calls: 1,
                    ..load(0)
                }],
                repeat(load(1), 2),
                repeat(
                    Tick {
                        new_calls: 1,
                        ..load(0)
                    },
                    15,
                ),
                repeat(load(0), 12),
            ]),
            want: vec![(3, 1, "wake"), (30, 0, "idle")],
        },
        Case {
            // Woken by a call that gave up (a short hold), with a start longer than the idle
            // time: the idle time runs from when the replica is ready, not from the call.
            name: "zero: idle time runs from the end of the start",
            autoscaling: scaling(0, 2, 4, 0, 3),
            windows: windows(2, 1),
            replicas: 0,
            ticks: concat(vec![
                vec![
                    load(0),
                    Tick {
                        new_calls: 1,
                        ..load(0)
                    },
                ],
                repeat(
                    Tick {
                        starting: 1,
                        ..load(0)
                    },
                    5,
                ),
                repeat(load(0), 5),
            ]),
            want: vec![(1, 1, "wake"), (9, 0, "idle")],
        },
        Case {
            // A burst on a deployment at zero asks for more than one replica at once.
            name: "zero: a burst wakes more than one replica",
            autoscaling: scaling(0, 4, 2, 5, 10),
            windows: windows(4, 2),
            replicas: 0,
            ticks: vec![
                load(0),
                load(0),
                Tick {
                    queued: 12,
                    new_calls: 12,
                    ..load(0)
                },
            ],
            want: vec![(2, 2, "wake")],
        },
        Case {
            // A fresh start (berth restarted) with nothing going on does not go to zero before
            // the scale-to-zero time.
            name: "zero: not before the idle time, from the first look",
            autoscaling: scaling(0, 2, 4, 1, 5),
            windows: windows(2, 1),
            replicas: 1,
            ticks: repeat(load(0), 7),
            want: vec![(5, 0, "idle")],
        },
    ];
    for case in &cases {
        assert_eq!(run(case), case.want, "{}", case.name);
    }
}

#[test]
fn an_api_change_restarts_the_scale_down_wait() {
    let a = scaling(0, 4, 4, 10, 300);
    let w = windows(1, 1);
    let t0 = Instant::now();
    let mut state = ScaleState::default();
    let signals = |secs: u64, generation: i64| Signals {
        demand: Demand::default(),
        replicas: 3,
        starting: 0,
        generation,
        now: t0 + Duration::from_secs(secs),
    };
    for secs in 0..9 {
        assert_eq!(decide(&a, 1, &w, &mut state, &signals(secs, 1), true), None);
    }
    // A scale through the API at second 9 (new generation): the wait starts again.
    for secs in 9..19 {
        assert_eq!(
            decide(&a, 1, &w, &mut state, &signals(secs, 2), true),
            None,
            "{secs}"
        );
    }
    let d = decide(&a, 1, &w, &mut state, &signals(19, 2), true).expect("down");
    assert_eq!((d.from, d.to, d.reason), (3, 1, "quiet"));
}

#[test]
fn a_decision_carries_its_signals_and_extra_passes_do_not_sample() {
    let a = scaling(0, 4, 4, 60, 300);
    let w = windows(60, 6);
    let t0 = Instant::now();
    let mut state = ScaleState::default();
    let at = |secs: u64, in_flight: u32, queued: u32| Signals {
        demand: Demand {
            in_flight,
            queued,
            calls: 0,
        },
        replicas: 1,
        starting: 0,
        generation: 1,
        now: t0 + Duration::from_secs(secs),
    };
    assert_eq!(decide(&a, 1, &w, &mut state, &at(0, 0, 0), true), None);
    // Passes between samples (nudges) decide on the samples so far.
    for _ in 0..5 {
        assert_eq!(decide(&a, 1, &w, &mut state, &at(0, 16, 0), false), None);
    }
    let d = decide(&a, 1, &w, &mut state, &at(1, 14, 2), true).expect("up");
    assert_eq!((d.in_flight, d.queued, d.to), (14, 2, 2));
    assert_eq!(d.panic_avg, 8.0);
    assert_eq!(d.stable_avg, 8.0);
    assert_eq!(d.direction.as_str(), "up");
}
