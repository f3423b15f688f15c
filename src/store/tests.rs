//! The store's test-suite. Every case runs on SQLite (a fresh file in a temp dir) and, when
//! `DIALTONE_TEST_POSTGRES_URL` is set, on PostgreSQL too (`scripts/pg-test-db.sh` starts
//! one). Postgres cases share one database and run in parallel, so each works on ids of
//! its own and never assumes it sees the whole table.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::model::number::{PhoneNumber, Secret, Transport, WeightedAgent};
use crate::model::{
    Agent, AudioEncoding, Call, CallStatus, Direction, DisconnectionReason, ResponseEngine,
};

const PG_ENV: &str = "DIALTONE_TEST_POSTGRES_URL";

struct Fixture {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/db/t.db", dir.path().display());
    Fixture {
        store: Store::connect(&url).await.unwrap(),
        _dir: Some(dir),
    }
}

async fn postgres() -> Option<Fixture> {
    let url = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty())?;
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    Some(Fixture { store, _dir: None })
}

/// Runs `$name(store)` on SQLite, and on Postgres when configured.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = super::sqlite().await;
                    super::$name(&f.store).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(f) = super::postgres().await else {
                        // The project's test script always provides one; a run that
                        // asks for Postgres must not pass without it.
                        assert!(
                            std::env::var_os("DIALTONE_REQUIRE_POSTGRES").is_none(),
                            "DIALTONE_REQUIRE_POSTGRES is set but {} is not",
                            super::PG_ENV
                        );
                        eprintln!("{} not set: skipping the Postgres run", super::PG_ENV);
                        return;
                    };
                    super::$name(&f.store).await;
                }
            )*
        }
    };
}

suite!(
    agent_crud,
    agent_updates_do_not_lose_each_other,
    agent_listing_pages,
    call_crud_and_metadata,
    delete_refuses_live_calls,
    list_calls_filters,
    list_calls_pages_both_ways,
    claim_outcomes,
    claim_race_has_one_winner,
    expiry_sweeps_only_unclaimed_passed_windows,
    ongoing_then_finish_is_idempotent,
    number_crud,
    number_lookups_ignore_the_plus,
    number_updates_do_not_lose_each_other,
    number_listing_pages,
);

fn agent(id: &str, created: i64) -> Agent {
    Agent {
        agent_id: id.to_owned(),
        agent_name: Some(format!("name of {id}")),
        version: 0,
        response_engine: ResponseEngine {
            kind: "audio-websocket".to_owned(),
            url: "wss://bot.example.com/ws".to_owned(),
            audio_encoding: AudioEncoding::Pcm16000,
            headers: BTreeMap::from([("Authorization".to_owned(), "Bearer s3cret".to_owned())]),
        },
        webhook_url: None,
        max_call_duration_ms: 3_600_000,
        end_call_after_silence_ms: 600_000,
        ring_duration_ms: 30_000,
        forward_early_media: false,
        last_modification_timestamp: created,
    }
}

fn registered(agent_id: &str, created: i64, until: i64) -> Call {
    let call_id = new_id("call_");
    Call {
        sip_uri: Some(format!("sip:{call_id}@example.net")),
        call_id,
        call_type: "phone_call".to_owned(),
        agent_id: agent_id.to_owned(),
        agent_name: None,
        agent_version: 0,
        call_status: CallStatus::Registered,
        direction: Direction::Inbound,
        from_number: Some("+15550001111".to_owned()),
        to_number: Some("+15550002222".to_owned()),
        metadata: Some(serde_json::json!({"customer": 42, "tags": ["a", "b"]})),
        retell_llm_dynamic_variables: Some(BTreeMap::from([("name".into(), "Ada".into())])),
        custom_sip_headers: None,
        start_timestamp: None,
        end_timestamp: None,
        duration_ms: None,
        disconnection_reason: None,
        telephony_identifier: None,
        transfer_destination: None,
        codec: None,
        sip_status: None,
        registered_until: Some(until),
        created_timestamp: created,
    }
}

async fn agent_crud(store: &Store) {
    let id = new_id("agent_");
    let a = agent(&id, 1_000);
    store.create_agent(&a).await.unwrap();
    assert_eq!(store.get_agent(&id).await.unwrap().as_ref(), Some(&a));
    assert!(matches!(
        store.create_agent(&a).await,
        Err(StoreError::Duplicate(_))
    ));

    let updated = store
        .update_agent::<StoreError, _>(&id, 5_000, |agent| {
            agent.agent_name = None;
            agent.ring_duration_ms = 45_000;
            Ok(())
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.version, 1);
    assert_eq!(updated.last_modification_timestamp, 5_000);
    assert_eq!(updated.agent_name, None);
    assert_eq!(updated.ring_duration_ms, 45_000);
    assert_eq!(updated.response_engine, a.response_engine, "untouched");
    assert_eq!(store.get_agent(&id).await.unwrap(), Some(updated.clone()));

    // An edit that fails writes nothing.
    let failed = store
        .update_agent(&id, 9_000, |agent| {
            agent.ring_duration_ms = 1;
            Err(StoreError::UnknownCursor)
        })
        .await;
    assert!(matches!(failed, Err(StoreError::UnknownCursor)));
    assert_eq!(store.get_agent(&id).await.unwrap(), Some(updated));

    let missing = store
        .update_agent::<StoreError, _>("agent_nope", 1, |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(missing, None);

    assert!(store.delete_agent(&id).await.unwrap());
    assert!(!store.delete_agent(&id).await.unwrap());
    assert_eq!(store.get_agent(&id).await.unwrap(), None);
}

async fn agent_updates_do_not_lose_each_other(store: &Store) {
    let id = new_id("agent_");
    store.create_agent(&agent(&id, 1)).await.unwrap();
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            store
                .update_agent::<StoreError, _>(&id, 10, |agent| {
                    agent
                        .response_engine
                        .headers
                        .insert(format!("X-Writer-{i}"), i.to_string());
                    Ok(())
                })
                .await
                .unwrap()
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let a = store.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(a.version, 8);
    assert_eq!(a.response_engine.headers.len(), 9, "{a:?}");
}

async fn agent_listing_pages(store: &Store) {
    // Far-future creation times keep other tests' agents out of the way on Postgres.
    let base = 4_000_000_000_000 + rand::random::<u32>() as i64 * 10;
    let ids: Vec<String> = (0..5).map(|_| new_id("agent_")).collect();
    for (i, id) in ids.iter().enumerate() {
        store
            .create_agent(&agent(id, base + i as i64))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut key: Option<String> = None;
    loop {
        let page = store
            .list_agents(SortOrder::Ascending, Some(2), key.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|a| a.agent_id.clone()));
        key = page.items.last().map(|a| a.agent_id.clone());
        if !page.has_more {
            break;
        }
    }
    let ours: Vec<&String> = seen.iter().filter(|id| ids.contains(id)).collect();
    assert_eq!(ours, ids.iter().collect::<Vec<_>>());

    let all = store
        .list_agents(SortOrder::Descending, None, None)
        .await
        .unwrap();
    assert!(!all.has_more);
    let ours: Vec<&String> = all
        .items
        .iter()
        .map(|a| &a.agent_id)
        .filter(|id| ids.contains(id))
        .collect();
    assert_eq!(ours, ids.iter().rev().collect::<Vec<_>>());
    assert!(matches!(
        store
            .list_agents(SortOrder::Ascending, Some(2), Some("agent_missing"))
            .await,
        Err(StoreError::UnknownCursor)
    ));
}

async fn call_crud_and_metadata(store: &Store) {
    let now = now_ms();
    let call = registered(&new_id("agent_"), now, now + 60_000);
    store.insert_call(&call).await.unwrap();
    assert_eq!(
        store.get_call(&call.call_id).await.unwrap().as_ref(),
        Some(&call)
    );
    assert!(matches!(
        store.insert_call(&call).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(store.get_call("call_missing").await.unwrap(), None);

    let update = CallUpdate {
        metadata: Some(Some(serde_json::json!({"new": true}))),
        retell_llm_dynamic_variables: None,
    };
    let after = store
        .update_call_metadata(&call.call_id, &update)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.metadata, Some(serde_json::json!({"new": true})));
    assert_eq!(
        after.retell_llm_dynamic_variables,
        call.retell_llm_dynamic_variables
    );
    let cleared = store
        .update_call_metadata(
            &call.call_id,
            &CallUpdate {
                metadata: None,
                retell_llm_dynamic_variables: Some(None),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.retell_llm_dynamic_variables, None);
    assert_eq!(cleared.metadata, Some(serde_json::json!({"new": true})));
    assert_eq!(
        store
            .update_call_metadata("call_missing", &update)
            .await
            .unwrap(),
        None
    );
    // Nothing to change is a read.
    assert_eq!(
        store
            .update_call_metadata(&call.call_id, &CallUpdate::default())
            .await
            .unwrap(),
        Some(cleared)
    );

    assert_eq!(
        store.delete_call(&call.call_id).await.unwrap(),
        DeleteCall::Deleted
    );
    assert_eq!(
        store.delete_call(&call.call_id).await.unwrap(),
        DeleteCall::NotFound
    );
}

async fn delete_refuses_live_calls(store: &Store) {
    let now = now_ms();
    let call = registered(&new_id("agent_"), now, now + 60_000);
    store.insert_call(&call).await.unwrap();
    assert!(matches!(
        store
            .claim_registered_call(&call.call_id, now)
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    assert_eq!(
        store.delete_call(&call.call_id).await.unwrap(),
        DeleteCall::Live,
        "claimed: being set up"
    );
    assert!(store
        .mark_ongoing(&call.call_id, now + 10, "PCMU", None, Some(200))
        .await
        .unwrap());
    assert_eq!(
        store.delete_call(&call.call_id).await.unwrap(),
        DeleteCall::Live
    );
    assert!(store
        .finish_call(
            &call.call_id,
            DisconnectionReason::UserHangup,
            now + 20,
            None
        )
        .await
        .unwrap());
    assert_eq!(
        store.delete_call(&call.call_id).await.unwrap(),
        DeleteCall::Deleted
    );
}

async fn list_calls_filters(store: &Store) {
    let agent_a = new_id("agent_");
    let agent_b = new_id("agent_");
    let now = now_ms();
    let mut a1 = registered(&agent_a, now, now + 60_000);
    a1.from_number = Some("+4930_1%".to_owned());
    let mut a2 = registered(&agent_a, now + 1, now + 60_000);
    a2.direction = Direction::Outbound;
    a2.agent_version = 3;
    let b1 = registered(&agent_b, now + 2, now + 60_000);
    for c in [&a1, &a2, &b1] {
        store.insert_call(c).await.unwrap();
    }
    store
        .mark_ongoing(&a2.call_id, now + 1_000, "G722", None, None)
        .await
        .unwrap();
    store
        .finish_call(
            &a2.call_id,
            DisconnectionReason::AgentHangup,
            now + 4_000,
            None,
        )
        .await
        .unwrap();

    let both = vec![
        AgentMatch {
            agent_id: agent_a.clone(),
            versions: vec![],
        },
        AgentMatch {
            agent_id: agent_b.clone(),
            versions: vec![],
        },
    ];
    let ids = |filter: CallFilter| async move {
        let page = store
            .list_calls(&filter, SortOrder::Ascending, 100, None)
            .await
            .unwrap();
        let count = store.count_calls(&filter).await.unwrap();
        assert_eq!(count as usize, page.items.len());
        page.items
            .into_iter()
            .map(|c| c.call_id)
            .collect::<Vec<_>>()
    };
    let base = CallFilter {
        agents: both.clone(),
        ..CallFilter::default()
    };
    assert_eq!(
        ids(base.clone()).await,
        vec![a1.call_id.clone(), a2.call_id.clone(), b1.call_id.clone()]
    );
    let only_a = CallFilter {
        agents: vec![AgentMatch {
            agent_id: agent_a.clone(),
            versions: vec![3],
        }],
        ..CallFilter::default()
    };
    assert_eq!(ids(only_a).await, vec![a2.call_id.clone()]);
    let ended = CallFilter {
        call_status: Some(vec![CallStatus::Ended]),
        ..base.clone()
    };
    assert_eq!(ids(ended).await, vec![a2.call_id.clone()]);
    let inbound = CallFilter {
        direction: Some(vec![Direction::Inbound]),
        ..base.clone()
    };
    assert_eq!(
        ids(inbound).await,
        vec![a1.call_id.clone(), b1.call_id.clone()]
    );
    let reason = CallFilter {
        disconnection_reason: Some(vec![DisconnectionReason::AgentHangup]),
        ..base.clone()
    };
    assert_eq!(ids(reason).await, vec![a2.call_id.clone()]);
    let started = CallFilter {
        start_timestamp: Some(NumberMatch::Between(now as f64, (now + 2_000) as f64)),
        ..base.clone()
    };
    assert_eq!(ids(started).await, vec![a2.call_id.clone()]);
    let ended_late = CallFilter {
        end_timestamp: Some(NumberMatch::Gt((now + 5_000) as f64)),
        ..base.clone()
    };
    assert!(ids(ended_late).await.is_empty());
    let long = CallFilter {
        duration_ms: Some(NumberMatch::Ge(3_000.0)),
        ..base.clone()
    };
    assert_eq!(ids(long).await, vec![a2.call_id.clone()]);
    // LIKE wildcards in the value are literal.
    let like = CallFilter {
        from_number: Some(TextMatch::EndsWith("_1%".to_owned())),
        ..base.clone()
    };
    assert_eq!(ids(like).await, vec![a1.call_id.clone()]);
    let wildcard = CallFilter {
        from_number: Some(TextMatch::Contains("%".to_owned())),
        ..base.clone()
    };
    assert_eq!(ids(wildcard).await, vec![a1.call_id.clone()]);
    let prefix = CallFilter {
        from_number: Some(TextMatch::StartsWith("+1555".to_owned())),
        ..base.clone()
    };
    assert_eq!(
        ids(prefix).await,
        vec![a2.call_id.clone(), b1.call_id.clone()]
    );
    let not_a1 = CallFilter {
        call_id: Some(TextMatch::Ne(a1.call_id.clone())),
        ..base.clone()
    };
    assert_eq!(
        ids(not_a1).await,
        vec![a2.call_id.clone(), b1.call_id.clone()]
    );
    let by_ids = CallFilter {
        call_id: Some(TextMatch::In(vec![b1.call_id.clone(), "call_x".to_owned()])),
        ..CallFilter::default()
    };
    assert_eq!(ids(by_ids).await, vec![b1.call_id.clone()]);
    let none = CallFilter {
        call_status: Some(vec![]),
        ..base.clone()
    };
    assert!(ids(none).await.is_empty());
    let case = CallFilter {
        call_id: Some(TextMatch::StartsWith("CALL_".to_owned())),
        ..base.clone()
    };
    assert!(
        ids(case).await.is_empty(),
        "text matching is case-sensitive"
    );
}

async fn list_calls_pages_both_ways(store: &Store) {
    let agent_id = new_id("agent_");
    let now = now_ms();
    let mut calls: Vec<Call> = (0..7)
        .map(|i| registered(&agent_id, now + i / 2, now + 60_000))
        .collect();
    for c in &calls {
        store.insert_call(c).await.unwrap();
    }
    // Ties on created_timestamp are broken by call_id.
    calls.sort_by(|a, b| (a.created_timestamp, &a.call_id).cmp(&(b.created_timestamp, &b.call_id)));
    let filter = CallFilter {
        agents: vec![AgentMatch {
            agent_id,
            versions: vec![],
        }],
        ..CallFilter::default()
    };
    for order in [SortOrder::Ascending, SortOrder::Descending] {
        let mut seen = Vec::new();
        let mut key: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store
                .list_calls(&filter, order, 3, key.as_deref())
                .await
                .unwrap();
            pages += 1;
            seen.extend(page.items.iter().map(|c| c.call_id.clone()));
            key = page.items.last().map(|c| c.call_id.clone());
            if !page.has_more {
                break;
            }
        }
        assert_eq!(pages, 3);
        let mut expected: Vec<String> = calls.iter().map(|c| c.call_id.clone()).collect();
        if order == SortOrder::Descending {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order:?}");
    }
    assert!(matches!(
        store
            .list_calls(&filter, SortOrder::Ascending, 3, Some("call_missing"))
            .await,
        Err(StoreError::UnknownCursor)
    ));
}

async fn claim_outcomes(store: &Store) {
    let now = now_ms();
    let agent_id = new_id("agent_");
    assert_eq!(
        store
            .claim_registered_call("call_missing", now)
            .await
            .unwrap(),
        Claim::Unknown
    );

    let open = registered(&agent_id, now, now + 60_000);
    store.insert_call(&open).await.unwrap();
    match store
        .claim_registered_call(&open.call_id, now)
        .await
        .unwrap()
    {
        Claim::Claimed(call) => {
            assert_eq!(call.call_id, open.call_id);
            assert_eq!(call.metadata, open.metadata);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .claim_registered_call(&open.call_id, now)
            .await
            .unwrap(),
        Claim::AlreadyClaimed
    );

    let late = registered(&agent_id, now - 10_000, now - 1);
    store.insert_call(&late).await.unwrap();
    assert_eq!(
        store
            .claim_registered_call(&late.call_id, now)
            .await
            .unwrap(),
        Claim::Expired
    );
    store.expire_registrations(now).await.unwrap();
    assert_eq!(
        store
            .claim_registered_call(&late.call_id, now)
            .await
            .unwrap(),
        Claim::Expired,
        "still expired once swept"
    );

    let stopped = registered(&agent_id, now, now + 60_000);
    store.insert_call(&stopped).await.unwrap();
    assert!(store
        .finish_call(
            &stopped.call_id,
            DisconnectionReason::ManualStopped,
            now,
            None
        )
        .await
        .unwrap());
    assert_eq!(
        store
            .claim_registered_call(&stopped.call_id, now)
            .await
            .unwrap(),
        Claim::AlreadyClaimed
    );

    // A call the engine creates itself (no registration window) is never claimable.
    let mut own = registered(&agent_id, now, now);
    own.registered_until = None;
    store.insert_call(&own).await.unwrap();
    assert_eq!(
        store
            .claim_registered_call(&own.call_id, now)
            .await
            .unwrap(),
        Claim::AlreadyClaimed
    );
}

async fn claim_race_has_one_winner(store: &Store) {
    for _ in 0..3 {
        let now = now_ms();
        let call = registered(&new_id("agent_"), now, now + 60_000);
        store.insert_call(&call).await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (store, id, barrier) = (store.clone(), call.call_id.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.claim_registered_call(&id, now).await.unwrap()
            }));
        }
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Claim::Claimed(_) => won += 1,
                Claim::AlreadyClaimed => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 1);
    }
}

async fn expiry_sweeps_only_unclaimed_passed_windows(store: &Store) {
    let now = now_ms();
    let agent_id = new_id("agent_");
    let passed = registered(&agent_id, now - 5_000, now - 1_000);
    let future = registered(&agent_id, now, now + 60_000);
    let claimed = registered(&agent_id, now - 5_000, now - 100);
    for c in [&passed, &future, &claimed] {
        store.insert_call(c).await.unwrap();
    }
    assert!(matches!(
        store
            .claim_registered_call(&claimed.call_id, now - 200)
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    let ended = store.expire_registrations(now).await.unwrap();
    assert!(ended.contains(&passed.call_id));
    assert!(!ended.contains(&future.call_id));
    assert!(!ended.contains(&claimed.call_id));
    let again = store.expire_registrations(now).await.unwrap();
    assert!(!again.contains(&passed.call_id), "ended once only");

    let call = store.get_call(&passed.call_id).await.unwrap().unwrap();
    assert_eq!(call.call_status, CallStatus::Ended);
    assert_eq!(
        call.disconnection_reason,
        Some(DisconnectionReason::RegisteredCallTimeout)
    );
    assert_eq!(call.end_timestamp, Some(now));
    assert_eq!(call.duration_ms, Some(0));
    let still = store.get_call(&future.call_id).await.unwrap().unwrap();
    assert_eq!(still.call_status, CallStatus::Registered);
}

async fn ongoing_then_finish_is_idempotent(store: &Store) {
    let now = now_ms();
    let call = registered(&new_id("agent_"), now, now + 60_000);
    store.insert_call(&call).await.unwrap();
    let ident = serde_json::json!({"sip_call_id": "abc@10.0.0.1"});
    assert!(store
        .mark_ongoing(&call.call_id, now + 500, "PCMA", Some(&ident), Some(200))
        .await
        .unwrap());
    assert!(!store
        .mark_ongoing(&call.call_id, now + 600, "PCMU", None, None)
        .await
        .unwrap());
    let live = store.get_call(&call.call_id).await.unwrap().unwrap();
    assert_eq!(live.call_status, CallStatus::Ongoing);
    assert_eq!(live.start_timestamp, Some(now + 500));
    assert_eq!(live.codec.as_deref(), Some("PCMA"));
    assert_eq!(live.telephony_identifier, Some(ident));
    assert_eq!(live.sip_status, Some(200));

    assert!(store
        .finish_call(
            &call.call_id,
            DisconnectionReason::UserHangup,
            now + 3_500,
            None
        )
        .await
        .unwrap());
    assert!(!store
        .finish_call(
            &call.call_id,
            DisconnectionReason::ErrorUnknown,
            now + 9_000,
            Some(500)
        )
        .await
        .unwrap());
    let done = store.get_call(&call.call_id).await.unwrap().unwrap();
    assert_eq!(done.call_status, CallStatus::Ended);
    assert_eq!(
        done.disconnection_reason,
        Some(DisconnectionReason::UserHangup)
    );
    assert_eq!(done.end_timestamp, Some(now + 3_500));
    assert_eq!(done.duration_ms, Some(3_000));
    assert_eq!(done.sip_status, Some(200), "kept when not given");

    // Never started: duration 0; the status follows the reason.
    let never = registered(&call.agent_id, now, now + 60_000);
    store.insert_call(&never).await.unwrap();
    assert!(store
        .finish_call(
            &never.call_id,
            DisconnectionReason::ErrorLlmWebsocketOpen,
            now + 100,
            Some(503)
        )
        .await
        .unwrap());
    let failed = store.get_call(&never.call_id).await.unwrap().unwrap();
    assert_eq!(failed.call_status, CallStatus::Error);
    assert_eq!(failed.duration_ms, Some(0));
    assert_eq!(failed.sip_status, Some(503));
    assert!(!store
        .finish_call("call_missing", DisconnectionReason::UserHangup, now, None)
        .await
        .unwrap());
}

#[tokio::test]
async fn committed_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/dir/t.db", dir.path().display());
    let now = now_ms();
    let a = agent(&new_id("agent_"), now);
    let c = registered(&a.agent_id, now, now + 60_000);
    {
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        store.create_agent(&a).await.unwrap();
        store.insert_call(&c).await.unwrap();
        store
            .mark_ongoing(&c.call_id, now + 1, "PCMU", None, Some(200))
            .await
            .unwrap();
        // No close: a crash does not close either.
        drop(store);
    }
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.get_agent(&a.agent_id).await.unwrap(), Some(a));
    let call = store.get_call(&c.call_id).await.unwrap().unwrap();
    assert_eq!(call.call_status, CallStatus::Ongoing);
    // Migrations already applied: a third open is as good as the second.
    store.close().await;
    Store::connect(&url).await.unwrap();
}

#[tokio::test]
async fn sqlite_file_is_in_wal_mode() {
    use sqlx::Row;
    let f = sqlite().await;
    let row = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&f.store.pool)
        .await
        .unwrap();
    let mode: String = row.try_get(0).unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
}

#[tokio::test]
async fn in_memory_database_works_on_one_connection() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let a = agent("agent_mem", 1);
    store.create_agent(&a).await.unwrap();
    assert_eq!(store.get_agent("agent_mem").await.unwrap(), Some(a));
}

#[tokio::test]
async fn bad_urls_are_refused_without_echoing_them() {
    let err = Store::connect("mysql://user:hunter2@db/x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl));
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn ids_are_random_hex() {
    let a = new_id("call_");
    let b = new_id("call_");
    assert_ne!(a, b);
    assert_eq!(a.len(), 5 + 32);
    assert!(a[5..]
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
}

/// A random NANP-looking E.164 number, so parallel Postgres cases never collide.
fn random_number() -> String {
    format!(
        "+1{}",
        2_000_000_000 + rand::random::<u64>() % 7_000_000_000
    )
}

fn number(phone_number: &str, created: i64) -> PhoneNumber {
    PhoneNumber {
        phone_number: phone_number.to_owned(),
        nickname: Some("front desk".to_owned()),
        inbound_agents: vec![
            WeightedAgent {
                agent_id: "agent_a".to_owned(),
                weight: 0.25,
                agent_version: None,
            },
            WeightedAgent {
                agent_id: "agent_b".to_owned(),
                weight: 0.75,
                agent_version: Some(crate::model::number::AgentVersion::Number(3)),
            },
        ],
        outbound_agents: vec![],
        inbound_webhook_url: Some("https://example.com/inbound".to_owned()),
        termination_uri: "trunk.example.com:5080;transport=tcp".to_owned(),
        sip_trunk_auth_username: Some("trunkuser".to_owned()),
        sip_trunk_auth_password: Some(Secret::new("trunk-pass-1")),
        transport: Transport::Tcp,
        allowed_inbound_country_list: Some(vec!["US".to_owned(), "CA".to_owned()]),
        allowed_outbound_country_list: None,
        codecs: vec!["PCMU".to_owned(), "G722".to_owned()],
        version: 0,
        created_timestamp: created,
        last_modification_timestamp: created,
    }
}

async fn number_crud(store: &Store) {
    let n = random_number();
    let record = number(&n, 1_000);
    store.create_number(&record).await.unwrap();
    assert_eq!(store.get_number(&n).await.unwrap().as_ref(), Some(&record));
    assert!(matches!(
        store.create_number(&record).await,
        Err(StoreError::Duplicate(_))
    ));
    // The same number without its '+' is the same number.
    let bare = number(&n[1..], 1_000);
    assert!(matches!(
        store.create_number(&bare).await,
        Err(StoreError::Duplicate(_))
    ));

    let updated = store
        .update_number::<StoreError, _>(&n, 5_000, |r| {
            r.nickname = None;
            r.transport = Transport::Tls;
            r.sip_trunk_auth_password = Some(Secret::new("trunk-pass-2"));
            r.outbound_agents = vec![WeightedAgent {
                agent_id: "agent_c".to_owned(),
                weight: 1.0,
                agent_version: None,
            }];
            r.phone_number = "+19999999999".to_owned(); // the key cannot change
            Ok(())
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.phone_number, n);
    assert_eq!(updated.version, 1);
    assert_eq!(updated.last_modification_timestamp, 5_000);
    assert_eq!(updated.created_timestamp, 1_000);
    assert_eq!(updated.nickname, None);
    assert_eq!(updated.transport, Transport::Tls);
    assert_eq!(updated.inbound_agents, record.inbound_agents, "untouched");
    let read = store.get_number(&n).await.unwrap().unwrap();
    assert_eq!(read, updated);
    assert_eq!(
        read.sip_trunk_auth_password.as_ref().map(Secret::expose),
        Some("trunk-pass-2")
    );

    // An edit that fails writes nothing.
    let failed = store
        .update_number(&n, 9_000, |r| {
            r.nickname = Some("never".to_owned());
            Err(StoreError::UnknownCursor)
        })
        .await;
    assert!(matches!(failed, Err(StoreError::UnknownCursor)));
    assert_eq!(store.get_number(&n).await.unwrap(), Some(updated));

    let missing = store
        .update_number::<StoreError, _>(&random_number(), 1, |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(missing, None);

    assert!(
        store.delete_number(&n[1..]).await.unwrap(),
        "deleted without the +"
    );
    assert!(!store.delete_number(&n).await.unwrap());
    assert_eq!(store.get_number(&n).await.unwrap(), None);
}

async fn number_lookups_ignore_the_plus(store: &Store) {
    let n = random_number();
    store.create_number(&number(&n, 1)).await.unwrap();
    let digits = &n[1..];
    for spelling in [
        n.clone(),
        digits.to_owned(),
        format!(" {digits}"), // a '+' that a form decoder turned into a space
        format!("{n};npdi;rn=+1415"),
        format!("{}-{}-{}", &digits[..4], &digits[4..7], &digits[7..]),
    ] {
        let found = store.find_number_for_inbound(&spelling).await.unwrap();
        assert_eq!(
            found.map(|f| f.phone_number),
            Some(n.clone()),
            "{spelling:?}"
        );
    }
    assert_eq!(
        store
            .get_number(digits)
            .await
            .unwrap()
            .unwrap()
            .phone_number,
        n
    );
    assert_eq!(store.find_number_for_inbound("").await.unwrap(), None);
    assert_eq!(store.find_number_for_inbound(";x").await.unwrap(), None);
    assert_eq!(
        store
            .find_number_for_inbound(&random_number())
            .await
            .unwrap(),
        None
    );

    // A pseudo number stored without '+' is found with one too.
    let pseudo = format!("ext{}", rand::random::<u32>());
    store.create_number(&number(&pseudo, 2)).await.unwrap();
    let found = store
        .find_number_for_inbound(&format!("+{pseudo}"))
        .await
        .unwrap();
    assert_eq!(found.map(|f| f.phone_number), Some(pseudo));
}

async fn number_updates_do_not_lose_each_other(store: &Store) {
    let n = random_number();
    let mut record = number(&n, 1);
    record.codecs = vec![];
    store.create_number(&record).await.unwrap();
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, n) = (store.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            store
                .update_number::<StoreError, _>(&n, 10, |r| {
                    r.codecs.push(format!("C{i}"));
                    Ok(())
                })
                .await
                .unwrap()
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = store.get_number(&n).await.unwrap().unwrap();
    assert_eq!(r.version, 8);
    assert_eq!(r.codecs.len(), 8, "{:?}", r.codecs);
}

async fn number_listing_pages(store: &Store) {
    // Far-future creation times keep other tests' numbers out of the way on Postgres.
    let base = 4_000_000_000_000 + rand::random::<u32>() as i64 * 10;
    let numbers: Vec<String> = (0..5).map(|_| random_number()).collect();
    for (i, n) in numbers.iter().enumerate() {
        store
            .create_number(&number(n, base + i as i64))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut key: Option<String> = None;
    loop {
        let page = store
            .list_numbers(SortOrder::Ascending, Some(2), key.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|r| r.phone_number.clone()));
        key = page.items.last().map(|r| r.phone_number.clone());
        if !page.has_more {
            break;
        }
    }
    let ours: Vec<&String> = seen.iter().filter(|n| numbers.contains(n)).collect();
    assert_eq!(ours, numbers.iter().collect::<Vec<_>>());

    let all = store
        .list_numbers(SortOrder::Descending, None, None)
        .await
        .unwrap();
    assert!(!all.has_more);
    let ours: Vec<&String> = all
        .items
        .iter()
        .map(|r| &r.phone_number)
        .filter(|n| numbers.contains(n))
        .collect();
    assert_eq!(ours, numbers.iter().rev().collect::<Vec<_>>());
    assert!(matches!(
        store
            .list_numbers(SortOrder::Ascending, Some(2), Some("+10000000000"))
            .await,
        Err(StoreError::UnknownCursor)
    ));
}
