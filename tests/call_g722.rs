//! Issue 3, end to end with SIPp as the caller, G.722: SIPp offers G.722 only and replays a
//! 1 kHz + 5 kHz two-tone (encoded by libg722); the echo agent speaks pcm_16000, so the
//! audio stays wideband end to end (AGENT_PROTOCOL.md): both tones must come back, the
//! 5 kHz one proving nothing was squeezed through 8 kHz on the way.

mod harness;

use dialtone::media::codec::Codec;
use harness::pcap_call::{run_pcap_call, PcapCall};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g722_call_echoes_both_tones_through_a_wideband_agent() {
    run_pcap_call(PcapCall {
        scenario: "e2e/sipp/uac_pcap_g722.xml",
        codec: Codec::G722,
        encoding: "pcm_16000",
        expect_high_tone: true,
    })
    .await;
}
