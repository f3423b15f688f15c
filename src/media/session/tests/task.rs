//! The tokio task over real UDP on 127.0.0.1: only the glue (sockets, channels, the
//! sleep, the end). What the session does is tested on the virtual clock.

use std::net::IpAddr;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::*;
use crate::agent::AgentLink;
use crate::media::ports::{PortPool, RtpSocket};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn peer_socket() -> UdpSocket {
    UdpSocket::bind((LOCAL, 0)).await.unwrap()
}

/// The task for a PCMU session with the caller's RTP and RTCP sockets, and the agent's
/// ends of its channels.
fn start(
    socket: RtpSocket,
    rtp: &UdpSocket,
    rtcp: &UdpSocket,
) -> (
    MediaHandle,
    mpsc::Receiver<ToAgent>,
    mpsc::Sender<FromAgent>,
) {
    let mut cfg = config(Codec::Pcmu, AudioEncoding::Mulaw8000);
    cfg.negotiated = negotiated(
        Codec::Pcmu,
        rtp.local_addr().unwrap(),
        rtcp.local_addr().unwrap(),
    );
    let (to_agent, agent_rx) = mpsc::channel(4096);
    let (agent_tx, from_agent) = mpsc::channel(64);
    let link = AgentLink {
        to_agent,
        from_agent,
    };
    (spawn(socket, cfg, link), agent_rx, agent_tx)
}

/// Waits for the next RTCP datagram on `sock` that carries a BYE.
async fn bye(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .expect("RTCP at the end")
            .unwrap();
        if rtcp_kinds(&buf[..n]).contains(&203) {
            return buf[..n].to_vec();
        }
    }
}

#[tokio::test]
async fn the_task_carries_audio_both_ways_and_stop_releases_the_port() {
    let pool = PortPool::new((47310, 47311), LOCAL);
    let socket = pool.bind().await.expect("test port pair free");
    assert!(pool.bind().await.is_err());
    let media = socket.local_addr().unwrap();
    let (rtp, rtcp) = (peer_socket().await, peer_socket().await);
    let (handle, mut agent_rx, agent_tx) = start(socket, &rtp, &rtcp);

    // The agent talks for 200 ms while the caller sends 500 ms of a tone.
    let speech = mulaw(&tone(1000.0, 8000, 1600, 0));
    agent_tx.send(FromAgent::Media(speech)).await.unwrap();
    let payloads = tone_payloads(Codec::Pcmu, 1000.0, 25);
    let mut tick = tokio::time::interval(20 * MS);
    for (i, p) in payloads.iter().enumerate() {
        tick.tick().await;
        let seq = 1000 + i as u16;
        let pkt = rtp_packet(0, seq, 160 * u32::from(seq), 77, i == 0, p);
        rtp.send_to(&pkt, media).await.unwrap();
    }
    tokio::time::sleep(150 * MS).await;

    // What the caller heard: the agent's tone, from our RTP port.
    let mut heard = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = rtp.try_recv_from(&mut buf) {
        assert_eq!(from, media);
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        let pcm = agent_pcm(AudioEncoding::Mulaw8000, p.payload());
        if !is_silent(&pcm) {
            heard.extend(pcm);
        }
    }
    assert_eq!(heard.len(), 10 * 160);
    assert!(tone_share(&heard, 8000, 1000.0) > 0.9);

    handle.commands.send(MediaCommand::Stop).await.unwrap();
    let outcome = timeout(Duration::from_secs(5), handle.done)
        .await
        .expect("the task ends")
        .expect("no panic");
    assert_eq!(outcome.reason, None);
    assert_eq!(outcome.stats.packets_in, 25);
    // What the agent heard: the caller's payloads (loopback loses nothing), then Stop.
    let mut msgs = Vec::new();
    while let Ok(m) = agent_rx.try_recv() {
        msgs.push(m);
    }
    assert!(matches!(msgs.last(), Some(ToAgent::Stop)));
    let frames = media_frames(&msgs);
    assert!(voiced(AudioEncoding::Mulaw8000, &frames).len() >= 20 * 160);
    // The caller's BYE, from our RTCP port, and the port pair back in the pool.
    let bye = bye(&rtcp).await;
    assert_eq!(rtcp_kinds(&bye), [200, 202, 203]);
    assert_eq!(pool.available(), 1);
    assert_eq!(pool.bind().await.unwrap().port(), 47310);
}

#[tokio::test]
async fn the_task_ends_when_the_agent_goes_away() {
    let pool = PortPool::new((47312, 47319), LOCAL);
    // Its messages end (the bridge dropped its sender) or nobody listens any more (it
    // dropped its receiver: noticed at the first frame for it).
    for receiver_gone in [false, true] {
        let socket = pool.bind().await.unwrap();
        let media = socket.local_addr().unwrap();
        let rtp = peer_socket().await;
        let (handle, agent_rx, agent_tx) = start(socket, &rtp, &rtp);
        let _keep = if receiver_gone {
            drop(agent_rx);
            for seq in 0..5u16 {
                let pkt = rtp_packet(0, seq, 160 * u32::from(seq), 1, false, &[0xff; 160]);
                rtp.send_to(&pkt, media).await.unwrap();
                tokio::time::sleep(20 * MS).await;
            }
            Some(agent_tx)
        } else {
            drop(agent_tx);
            None
        };
        let outcome = timeout(Duration::from_secs(5), handle.done)
            .await
            .expect("the task ends")
            .expect("no panic");
        assert_eq!(
            outcome.reason,
            Some(DisconnectionReason::ErrorLlmWebsocketLostConnection),
            "receiver gone: {receiver_gone}"
        );
    }
    assert_eq!(pool.available(), 4);
}
