//! The per-packet paths on their own, as the benchmark drives them.

use super::*;

#[test]
fn drop_causes_index_their_metric_handles() {
    for (i, cause) in DropCause::ALL.iter().enumerate() {
        assert_eq!(*cause as usize, i);
    }
}

fn params(codec: Codec) -> StreamParams {
    StreamParams::new(codec, codec.payload_type(), Some(TE), 20)
}

#[test]
fn inbound_conceals_a_lost_packet_with_silence_of_its_length() {
    let t0 = Instant::now();
    let mut inb = InboundPath::new(params(Codec::Pcmu), AudioEncoding::Mulaw8000, t0);
    for seq in [0u16, 1, 3, 4] {
        let pkt = rtp_packet(0, seq, 160 * u32::from(seq), 5, false, &[seq as u8; 160]);
        let p = RtpPacket::parse(&pkt).unwrap();
        assert_eq!(inb.on_packet(&p, t0), Ok(Received::Audio));
    }
    let mut frames = Vec::new();
    for _ in 0..6 {
        inb.tick();
        while let Some((f, arrival)) = inb.pop_frame() {
            frames.push((f[0], f.len(), arrival.is_some()));
        }
    }
    let silence = g711::ULAW_SILENCE;
    assert_eq!(
        frames,
        [
            (0, 160, true),
            (1, 160, true),
            (silence, 160, false),
            (3, 160, true),
            (4, 160, true),
            (silence, 160, false),
        ]
    );
    assert_eq!(inb.concealed_frames(), 2);
    assert_eq!(inb.packets_lost(), 1);
}

#[test]
fn inbound_reframes_30ms_packets_into_20ms_frames() {
    let t0 = Instant::now();
    let mut inb = InboundPath::new(params(Codec::Pcma), AudioEncoding::Pcm16000, t0);
    for seq in 0u16..4 {
        let pcm = tone(1000.0, 8000, 240, 240 * seq as usize);
        let mut payload = vec![0; 240];
        g711::encode_alaw(&pcm, &mut payload);
        let pkt = rtp_packet(8, seq, 240 * u32::from(seq), 5, false, &payload);
        inb.on_packet(&RtpPacket::parse(&pkt).unwrap(), t0).unwrap();
    }
    let mut frames = 0;
    for _ in 0..4 {
        inb.tick();
        while let Some((f, _)) = inb.pop_frame() {
            assert_eq!(f.len(), 640);
            frames += 1;
        }
    }
    assert_eq!(inb.packet_interval(), 30 * MS);
    assert_eq!(frames, 6, "120 ms of audio in 20 ms frames");
}

#[test]
fn outbound_pcm_chunks_split_mid_sample_lose_nothing() {
    let t0 = Instant::now();
    let mut out = OutboundPath::new(params(Codec::G722), AudioEncoding::Pcm16000, 7, 0, 0, t0);
    let pcm: Vec<i16> = (0..320).map(|i| i * 37).collect();
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    for chunk in bytes.chunks(3) {
        out.push_agent(chunk);
    }
    assert_eq!(out.queued_samples(), 320);
    assert!(matches!(out.poll(t0, true), Polled::Packet(p) if p.len() == 172));
    assert!(out.is_drained());
    assert_eq!(out.poll(t0, true), Polled::Idle);
}
