//! Issue 3, end to end with SIPp as the caller, G.711 μ-law: register through the API,
//! SIPp dials `sip:{call_id}@127.0.0.1` offering PCMU only and replays a 1 kHz tone; the
//! test's echo agent (mulaw_8000: no transcoding) sends it back; the tone must return in
//! the RTP to the caller, the agent must see a proper stream, and the call must end as
//! `ended` / `user_hangup`.

mod harness;

use dialtone::media::codec::Codec;
use harness::pcap_call::{run_pcap_call, PcapCall};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_call_echoes_the_tone_and_ends_as_user_hangup() {
    run_pcap_call(PcapCall {
        scenario: "e2e/sipp/uac_pcap_pcmu.xml",
        codec: Codec::Pcmu,
        encoding: "mulaw_8000",
        expect_high_tone: false,
    })
    .await;
}
