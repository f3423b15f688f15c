//! Issue 3, end to end with SIPp as the caller, G.711 A-law: SIPp offers PCMA only and
//! replays a 1 kHz tone; the echo agent speaks mulaw_8000, so dialtone transcodes A-law to
//! μ-law and back. The tone must return, the agent must see a proper stream, and the call
//! must end as `ended` / `user_hangup`.

mod harness;

use dialtone::media::codec::Codec;
use harness::pcap_call::{run_pcap_call, PcapCall};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcma_call_echoes_the_tone_and_ends_as_user_hangup() {
    run_pcap_call(PcapCall {
        scenario: "e2e/sipp/uac_pcap_pcma.xml",
        codec: Codec::Pcma,
        encoding: "mulaw_8000",
        expect_high_tone: false,
    })
    .await;
}
