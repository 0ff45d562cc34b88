//! Server-Sent Events as the API sends them (live output, events): blocks of `id:`,
//! `event:` and `data:` lines.

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Takes the complete events off the front of `buf` (text received so far); comments
/// (keep-alives) are skipped.
pub fn parse_events(buf: &mut String) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let mut ev = SseEvent {
            event: "message".into(),
            ..SseEvent::default()
        };
        let mut any = false;
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => ev.id = Some(value.to_owned()),
                "event" => ev.event = value.to_owned(),
                "data" => {
                    if !ev.data.is_empty() {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                }
                _ => continue,
            }
            any = true;
        }
        if any {
            out.push(ev);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_whole_and_keep_alives_skipped() {
        let mut buf = String::from(
            ": keep-alive\n\nid: 3\nevent: chunk\ndata: {\"n\":3}\n\nevent: end\ndata: {}\n\nid: 4\nev",
        );
        let events = parse_events(&mut buf);
        assert_eq!(
            events,
            [
                SseEvent {
                    id: Some("3".into()),
                    event: "chunk".into(),
                    data: "{\"n\":3}".into()
                },
                SseEvent {
                    id: None,
                    event: "end".into(),
                    data: "{}".into()
                },
            ]
        );
        assert_eq!(buf, "id: 4\nev", "an unfinished event waits for the rest");
    }
}
