//! Issue 3: dialtone answers in the caller's order of preference. SIPp offers PCMA, G.722,
//! PCMU (in that order; dialtone's own default order puts G.722 first), so the answer must
//! choose PCMA, the returning RTP must be payload type 8, and the tone must come back.

mod harness;

use dialtone::media::codec::Codec;
use harness::pcap_call::{run_pcap_call, PcapCall};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_first_codec_is_chosen() {
    let result = run_pcap_call(PcapCall {
        scenario: "e2e/sipp/uac_pcap_prefer_pcma.xml",
        codec: Codec::Pcma,
        encoding: "pcm_24000",
        expect_high_tone: false,
    })
    .await;
    assert!(
        result
            .returned
            .iter()
            .all(|r| r.pt == 8 || r.pt == 101 || r.pt == 13),
        "dialtone must send PCMA (PT 8) only"
    );
}
