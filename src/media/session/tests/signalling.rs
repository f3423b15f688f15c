//! What signalling changes mid-call: hold and resume (ours and the caller's), one-way
//! directions, and outbound early media up to the answer.

use super::*;

#[test]
fn hold_sends_nothing_never_times_out_and_resumes_with_a_marker_and_a_timestamp_jump() {
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.inactivity_timeout = 200 * MS;
        c.no_audio_timeout = 200 * MS;
    });
    h.stream(0, 8, &tone_payloads(Codec::Pcmu, 1000.0, 3));
    let before = h.rtp_sent();
    let mut held = h.negotiated.clone();
    held.direction = Direction::RecvOnly;
    h.update(held);
    let held_at = h.now;
    h.advance(600 * MS);
    let during: Vec<Got> = h
        .rtp_sent()
        .into_iter()
        .filter(|p| p.at > held_at)
        .collect();
    assert!(during.is_empty(), "{} packets sent on hold", during.len());
    assert!(h.outcome.is_none(), "hold never hangs up");

    // Resume: sequence numbers continue without a gap, the timestamp jumps by the time
    // that passed, and the marker is set.
    let resumed_at = h.now;
    h.update(h.negotiated.clone());
    h.advance(100 * MS);
    let after = h.rtp_sent_since(resumed_at);
    assert_eq!(after.len(), 5);
    let last = before.last().unwrap();
    let first = &after[0];
    assert_eq!(first.seq, last.seq.wrapping_add(1));
    let gap_ms = u32::try_from((first.at - last.at).as_millis()).unwrap();
    assert!(gap_ms >= 600);
    assert_eq!(first.ts.wrapping_sub(last.ts), 8 * gap_ms);
    assert!(first.marker);
    assert!(after[1..].iter().all(|p| !p.marker));
    // Off hold, the inactivity timeout applies again, counted from the resume.
    let outcome = h.run_to_end(Duration::from_secs(1));
    assert_eq!(outcome.reason, Some(DisconnectionReason::Inactivity));
    assert_eq!(h.ended_at.unwrap() - resumed_at, 200 * MS);
}

#[test]
fn the_callers_hold_stops_our_stream_and_suspends_the_no_audio_timeout() {
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.no_audio_timeout = 200 * MS;
    });
    let mut held = h.negotiated.clone();
    held.remote_hold = true;
    held.remote_rtp = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 40000);
    h.update(held);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.rtp_sent().len(), 1, "only the packet before the hold");
    assert!(h.outcome.is_none());
    let resumed_at = h.now;
    h.update(h.negotiated.clone());
    let outcome = h.run_to_end(Duration::from_secs(1));
    assert_eq!(
        outcome.reason,
        Some(DisconnectionReason::ErrorNoAudioReceived)
    );
    assert_eq!(h.ended_at.unwrap() - resumed_at, 200 * MS);
    assert_eq!(h.rtp_sent_since(resumed_at).len(), 10);
}

#[test]
fn sendonly_keeps_sending_without_expecting_audio() {
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.no_audio_timeout = 200 * MS;
        c.negotiated.direction = Direction::SendOnly;
    });
    h.advance(Duration::from_secs(1));
    assert!(h.outcome.is_none(), "no audio is expected one-way");
    assert_eq!(h.rtp_sent().len(), 51);
    // inactive: neither way.
    let mut inactive = h.negotiated.clone();
    inactive.direction = Direction::Inactive;
    h.update(inactive);
    let at = h.now;
    h.advance(Duration::from_secs(1));
    assert!(h.rtp_sent_since(at + MS).is_empty());
    assert!(h.outcome.is_none());
}

#[test]
fn early_media_reaches_the_agent_and_nothing_is_sent_until_the_answer() {
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.early = true;
        c.no_audio_timeout = 200 * MS;
        c.inactivity_timeout = 300 * MS;
    });
    // Before the answer: the agent's audio is not sent, and silence never times out.
    h.agent_sends(FromAgent::Media(mulaw(&tone(1000.0, 8000, 4000, 0))));
    h.advance(400 * MS);
    assert!(h.rtp_sent().is_empty(), "nothing sent before the answer");
    assert!(h.outcome.is_none(), "no audio timeout before the answer");
    // The far end's ringback reaches the agent.
    h.stream(0, 0x440, &tone_payloads(Codec::Pcmu, 440.0, 15));
    h.advance(100 * MS);
    assert!(h.rtp_sent().is_empty());

    // The answer: our stream starts, and the answered stream is latched afresh, though it
    // comes from another address (and SSRC) than the ringback did.
    let answered_at = h.now;
    h.command(MediaCommand::Answered(h.negotiated.clone()));
    let answerer = addr(11, 42000);
    h.stream_from(
        answerer,
        0,
        0x1000,
        7000,
        &tone_payloads(Codec::Pcmu, 1000.0, 15),
    );
    let sent = h.rtp_sent();
    assert_eq!(sent.len(), 15);
    assert_eq!(
        sent[0].at,
        answered_at + 20 * MS,
        "the first frame due after it"
    );
    assert!(
        sent.iter().all(|p| p.dest == answerer),
        "to the answered source"
    );

    // Then the far end goes quiet: the inactivity timeout applies.
    let last_rtp = h.now - 20 * MS;
    let outcome = h.run_to_end(Duration::from_secs(1));
    assert_eq!(outcome.reason, Some(DisconnectionReason::Inactivity));
    assert_eq!(h.ended_at.unwrap() - last_rtp, 300 * MS);
    assert_eq!(outcome.stats.packets_in, 30);
    assert_eq!(outcome.stats.packets_dropped, 0);

    let msgs: Vec<&ToAgent> = h.agent.iter().map(|(_, m)| m).collect();
    let at = msgs
        .iter()
        .position(|m| matches!(m, ToAgent::Answered))
        .expect("the agent is told of the answer");
    assert_eq!(
        msgs.iter()
            .filter(|m| matches!(m, ToAgent::Answered))
            .count(),
        1
    );
    let before = voiced(AudioEncoding::Mulaw8000, &media_frames(msgs[..at].to_vec()));
    let after = voiced(AudioEncoding::Mulaw8000, &media_frames(msgs[at..].to_vec()));
    assert!(
        tone_share(&before, 8000, 440.0) > 0.8,
        "ringback before the answer"
    );
    assert!(
        tone_share(&after, 8000, 1000.0) > 0.8,
        "the answered voice after it"
    );
    assert!(before.len() >= 160 * 10 && after.len() >= 160 * 10);
}
