//! Early checks on a synthesize request, so obviously bad ones never reach a
//! worker. The engine checks again; this only saves a round trip.
//!
//! Pure functions over the request, the limits and what is known of the
//! voices. Never does I/O, and never echoes more than
//! [`ECHO_CHARS`](crate::protocol::ECHO_CHARS) characters of client input.
use crate::protocol::{clip, limits, ErrorCode, Input, SynthRequest, VoiceDesc, ECHO_CHARS};

/// What the checks need to know of one configured voice.
pub struct KnownVoice<'a> {
    pub name: &'a str,
    /// Known once a worker loaded it.
    pub info: Option<&'a VoiceDesc>,
}

/// The voice to use, or the error to answer with.
pub fn check(
    req: &SynthRequest,
    streamed_text: bool,
    default_voice: &str,
    voices: &[KnownVoice<'_>],
    max_text_chars: usize,
    fault_injection: bool,
) -> Result<String, (ErrorCode, String)> {
    let bad = |m: String| Err((ErrorCode::BadRequest, m));
    let name = req.voice.as_deref().unwrap_or(default_voice);
    let Some(voice) = voices.iter().find(|v| v.name == name) else {
        let names: Vec<&str> = voices.iter().map(|v| v.name).collect();
        let name = clip(name, ECHO_CHARS);
        return Err((ErrorCode::UnknownVoice, format!("no voice '{name}' (voices: {})", names.join(", "))));
    };
    match &req.input {
        // A streamed text's first piece may be empty.
        Input::Text(t) => {
            if t.trim().is_empty() && !streamed_text {
                return bad("text is empty".into());
            }
            let n = t.chars().count();
            if n > max_text_chars {
                return bad(format!("text has {n} characters, more than max_text_chars ({max_text_chars})"));
            }
        }
        Input::PhonemeIds(_) if streamed_text => {
            return bad("a streamed text must start with Text, not PhonemeIds".into());
        }
        Input::PhonemeIds(ids) => {
            if ids.is_empty() {
                return bad("phoneme id list is empty".into());
            }
            if ids.len() > limits::max_phoneme_ids(max_text_chars) {
                return bad(format!("{} phoneme ids is too many", ids.len()));
            }
            let limit = voice.info.map_or(i64::MAX, |i| i.num_symbols as i64);
            if let Some(id) = ids.iter().find(|&&id| id < 0 || id >= limit) {
                return bad(format!("phoneme id {id} is outside 0..{limit}"));
            }
        }
    }
    // The protocol's limits (the engine checks them again).
    if let Err(e) = limits::check_params(req.length_scale, req.noise_scale, req.noise_w) {
        return bad(e.to_string());
    }
    if let (Some(s), Some(info)) = (req.speaker, voice.info) {
        if let Err(e) = limits::check_speaker(s, info.num_speakers, name) {
            return bad(e.to_string());
        }
    }
    if req.timeout_ms == Some(0) {
        return bad("timeout_ms must be above 0".into());
    }
    if req.fault.is_some() && !fault_injection {
        return bad("fault injection is not built into this ttsd".into());
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Fault;

    fn info() -> VoiceDesc {
        VoiceDesc { language: "en".into(), quality: "medium".into(), sample_rate: 22050, num_speakers: 1, num_symbols: 256 }
    }

    fn run(req: SynthRequest, fi: bool) -> Result<String, (ErrorCode, String)> {
        let i = info();
        let voices = [KnownVoice { name: "joe", info: Some(&i) }, KnownVoice { name: "new", info: None }];
        check(&req, false, "joe", &voices, 100, fi)
    }

    fn code(req: SynthRequest) -> ErrorCode {
        run(req, false).unwrap_err().0
    }

    #[test]
    fn good_requests_pass_with_their_voice() {
        assert_eq!(run(SynthRequest::text("Hi."), false).unwrap(), "joe");
        let r = SynthRequest { voice: Some("new".into()), speaker: Some(7), ..SynthRequest::text("Hi.") };
        assert_eq!(run(r, false).unwrap(), "new", "unknown ranges are left to the engine");
        let r = SynthRequest { input: Input::PhonemeIds(vec![1, 0, 255, 2]), ..SynthRequest::text("") };
        assert!(run(r, false).is_ok());
    }

    #[test]
    fn bad_requests_are_refused_early() {
        let t = |s: &str| SynthRequest::text(s);
        assert_eq!(code(t("  \n")), ErrorCode::BadRequest);
        assert_eq!(code(t(&"a".repeat(101))), ErrorCode::BadRequest);
        assert!(run(t(&"é".repeat(100)), false).is_ok(), "characters, not bytes");
        assert_eq!(code(SynthRequest { voice: Some("bob".into()), ..t("Hi") }), ErrorCode::UnknownVoice);
        for bad in [f32::NAN, f32::INFINITY, 0.0, -1.0, 1e30] {
            assert_eq!(code(SynthRequest { length_scale: Some(bad), ..t("Hi") }), ErrorCode::BadRequest);
        }
        for bad in [f32::NAN, f32::NEG_INFINITY, -0.5, 1e9] {
            assert_eq!(code(SynthRequest { noise_w: Some(bad), ..t("Hi") }), ErrorCode::BadRequest);
            assert_eq!(code(SynthRequest { noise_scale: Some(bad), ..t("Hi") }), ErrorCode::BadRequest);
        }
        assert!(run(SynthRequest { noise_scale: Some(0.0), ..t("Hi") }, false).is_ok());
        assert_eq!(code(SynthRequest { speaker: Some(1), ..t("Hi") }), ErrorCode::BadRequest);
        assert_eq!(code(SynthRequest { input: Input::PhonemeIds(vec![]), ..t("") }), ErrorCode::BadRequest);
        assert_eq!(code(SynthRequest { input: Input::PhonemeIds(vec![1, 256]), ..t("") }), ErrorCode::BadRequest);
        assert_eq!(code(SynthRequest { input: Input::PhonemeIds(vec![-1]), ..t("") }), ErrorCode::BadRequest);
        assert_eq!(code(SynthRequest { timeout_ms: Some(0), ..t("Hi") }), ErrorCode::BadRequest);
    }

    #[test]
    fn a_streamed_text_may_start_empty_but_not_with_ids() {
        let i = info();
        let voices = [KnownVoice { name: "joe", info: Some(&i) }];
        assert!(check(&SynthRequest::text(""), true, "joe", &voices, 100, false).is_ok());
        let ids = SynthRequest { input: Input::PhonemeIds(vec![1, 2]), ..SynthRequest::text("") };
        assert_eq!(check(&ids, true, "joe", &voices, 100, false).unwrap_err().0, ErrorCode::BadRequest);
        assert_eq!(
            check(&SynthRequest::text("a".repeat(101)), true, "joe", &voices, 100, false).unwrap_err().0,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn an_unknown_voice_name_is_echoed_clipped() {
        let name = "n".repeat(1 << 20);
        let (code, msg) = run(SynthRequest { voice: Some(name), ..SynthRequest::text("Hi") }, false).unwrap_err();
        assert_eq!(code, ErrorCode::UnknownVoice);
        assert!(msg.len() < 200, "{} bytes", msg.len());
        assert!(msg.contains("voices: joe, new"));
    }

    #[test]
    fn faults_need_the_feature() {
        let r = SynthRequest { fault: Some(Fault::Crash), ..SynthRequest::text("Hi") };
        assert_eq!(run(r.clone(), false).unwrap_err().0, ErrorCode::BadRequest);
        assert!(run(r, true).is_ok());
    }
}
