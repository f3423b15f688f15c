//! How a session ends: timeouts, the agent's hang-up and failures, socket trouble.

use super::*;

#[test]
fn no_rtp_at_all_ends_with_no_audio_received() {
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.no_audio_timeout = 260 * MS;
    });
    let outcome = h.run_to_end(Duration::from_secs(1));
    assert_eq!(
        outcome.reason,
        Some(DisconnectionReason::ErrorNoAudioReceived)
    );
    assert_eq!(h.ended_at.unwrap() - h.t0, 260 * MS);
    assert_said_goodbye(&h);
    assert!(h.frames().is_empty());
    // Our stream ran until the end, the frame due at the deadline included.
    assert_eq!(h.rtp_sent().len(), 14);
    assert_eq!(h.rtp_sent().last().unwrap().at, h.ended_at.unwrap());
    assert_eq!(outcome.stats.packets_out, 14);
}

#[test]
fn rtp_stopping_ends_with_inactivity() {
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.inactivity_timeout = 300 * MS;
        c.no_audio_timeout = 300 * MS;
    });
    // Gaps shorter than the timeout do not matter.
    h.stream(0, 8, &tone_payloads(Codec::Pcmu, 1000.0, 5));
    h.advance(250 * MS);
    h.stream_from(
        caller_rtp(),
        0,
        8,
        1005,
        &tone_payloads(Codec::Pcmu, 1000.0, 5),
    );
    let last_rtp = h.now - 20 * MS;
    let outcome = h.run_to_end(Duration::from_secs(1));
    assert_eq!(outcome.reason, Some(DisconnectionReason::Inactivity));
    assert_eq!(h.ended_at.unwrap() - last_rtp, 300 * MS);
    assert_said_goodbye(&h);
    // The agent's timeline kept going with silence after the caller went quiet.
    let frames = h.frames().len();
    assert_eq!(frames as u64, outcome.stats.frames_to_agent);
    assert!(frames > 15);
}

#[test]
fn hangup_plays_out_queued_audio_then_ends() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.agent_sends(FromAgent::Media(mulaw(&tone(1000.0, 8000, 4000, 0)))); // 500 ms
    h.agent_sends(FromAgent::Hangup);
    assert!(
        !h.session.reads_agent(),
        "nothing more is read from the agent"
    );
    let outcome = h.run_to_end(Duration::from_secs(2));
    assert_eq!(outcome.reason, Some(DisconnectionReason::AgentHangup));
    // 25 frames due from 20 to 500 ms, and one interval for the last to sound.
    assert_eq!(h.ended_at.unwrap() - h.t0, 520 * MS);
    let voiced: Vec<Got> = h.rtp_sent().into_iter().filter(Got::voiced).collect();
    assert_eq!(voiced.len(), 25);
    assert_eq!(voiced.last().unwrap().at - h.t0, 500 * MS);
    assert_said_goodbye(&h);

    // The drain is capped.
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.hangup_drain_cap = 200 * MS;
    });
    h.agent_sends(FromAgent::Media(mulaw(&tone(1000.0, 8000, 80000, 0)))); // 10 s
    h.advance(100 * MS);
    let hung_up = h.now;
    h.agent_sends(FromAgent::Hangup);
    let outcome = h.run_to_end(Duration::from_secs(1));
    assert_eq!(outcome.reason, Some(DisconnectionReason::AgentHangup));
    assert_eq!(h.ended_at.unwrap() - hung_up, 200 * MS);

    // With nothing queued, hang-up is immediate.
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.advance(30 * MS);
    let hung_up = h.now;
    h.agent_sends(FromAgent::Hangup);
    assert_eq!(h.ended_at, Some(hung_up));
    assert_eq!(
        h.outcome.unwrap().reason,
        Some(DisconnectionReason::AgentHangup)
    );
}

#[test]
fn agent_failures_end_the_session() {
    // The bridge reports how the socket failed.
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.agent_sends(FromAgent::Failed(
        DisconnectionReason::ErrorLlmWebsocketRuntime,
    ));
    assert_eq!(
        h.outcome.unwrap().reason,
        Some(DisconnectionReason::ErrorLlmWebsocketRuntime)
    );
    assert_said_goodbye(&h);

    // The agent's messages end: the call is lost; the agent is still told to stop.
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.session.handle_agent_eof();
    h.step();
    assert_eq!(
        h.outcome.unwrap().reason,
        Some(DisconnectionReason::ErrorLlmWebsocketLostConnection)
    );
    assert_said_goodbye(&h);

    // The bridge dropping its receiver is noticed at the next message for it; the
    // caller still gets its BYE, and nothing more is offered to the agent.
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.agent_closed = true;
    h.stream(0, 1, &tone_payloads(Codec::Pcmu, 1000.0, 5));
    let outcome = h.outcome.expect("ended at the first frame for the agent");
    assert_eq!(
        outcome.reason,
        Some(DisconnectionReason::ErrorLlmWebsocketLostConnection)
    );
    // Frames start after two packets of jitter buffer, at 40 ms.
    assert_eq!(h.ended_at.unwrap() - h.t0, 40 * MS);
    assert!(h.agent.is_empty());
    let bye = h.rtcp_sent().last().copied().unwrap();
    assert_eq!(rtcp_kinds(&bye.bytes), [200, 202, 203]);
}

#[test]
fn many_receive_errors_in_a_row_end_the_session() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    for _ in 0..99 {
        h.session.handle_recv_error();
    }
    // A datagram between errors resets the count.
    h.rtp(&rtp_packet(0, 1, 160, 9, false, &[0xff; 160]));
    for _ in 0..99 {
        h.session.handle_recv_error();
    }
    h.step();
    assert!(h.outcome.is_none());
    h.session.handle_recv_error();
    h.step();
    assert_eq!(
        h.outcome.unwrap().reason,
        Some(DisconnectionReason::ErrorUnknown)
    );
}

#[test]
fn failed_sends_are_counted_as_drops_not_as_sent() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.sends_fail = true;
    h.advance(100 * MS); // 5 packets refused by the socket
    h.sends_fail = false;
    h.advance(100 * MS);
    let outcome = h.stop();
    assert_eq!(h.rtp_sent().len(), 1 + 5);
    assert_eq!(outcome.stats.packets_out, 6);
    assert_eq!(outcome.stats.packets_dropped, 5);
    assert_eq!(outcome.stats.rtcp_out, 1);
    // The refused packets took their sequence numbers: the far end sees them as lost.
    let seqs: Vec<u16> = h.rtp_sent().iter().map(|p| p.seq).collect();
    assert_eq!(seqs[1], seqs[0].wrapping_add(6));
}

#[test]
fn nothing_is_accepted_once_the_session_is_ending() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.session.close();
    // Inputs between the decision and the flush change nothing.
    h.session.handle_rtp(
        h.now,
        caller_rtp(),
        &mut rtp_packet(0, 1, 160, 9, false, &[0xff; 160]),
    );
    h.session
        .handle_agent(h.now, FromAgent::Mark("late".into()));
    h.session
        .handle_command(h.now, MediaCommand::Answered(h.negotiated.clone()));
    assert!(!h.session.reads_agent());
    assert_eq!(h.session.poll_timeout(), None);
    h.step();
    let outcome = h.outcome.unwrap();
    assert_eq!(outcome.reason, None);
    assert_eq!(outcome.stats.packets_in, 0);
    let controls = h.agent_controls();
    assert!(matches!(controls[..], [ToAgent::Stop]));
}
