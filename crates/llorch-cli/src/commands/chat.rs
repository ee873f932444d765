//! `llorch chat`: an interactive chat on the native API.
//!
//! Each turn is one task (`POST /v1/tasks`, `workload: chat`) carrying the whole history in
//! `messages`, streamed from `/v1/tasks/{id}/stream`. The history lives here, in the CLI; the
//! daemon session (`session_id`) only keeps the turn's KV warm on one slot, so a session the
//! daemon ended (TTL, `sessions.max_turns`) is replaced by a fresh one without losing a word.
//! Ctrl-C during an answer cancels that task in the daemon and forgets the turn; at the prompt
//! it ends the chat. See docs/CLI.md and docs/DECISIONS.md.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use orch_api_types::AdmissionResponse;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::seg;
use super::submit::{admission_line, model_or_default, priority};
use crate::cli::ChatArgs;
use crate::client::{Client, ErrorView};
use crate::config::Settings;
use crate::error::{CliError, Exit};
use crate::stream::{self, Followed, Outcome, Show};

/// What one line of input asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// Nothing (an empty line).
    Empty,
    /// A message to the model.
    Say(&'a str),
    /// `/clear`: forget the history.
    Clear,
    /// `/exit`, `/quit`.
    Exit,
    /// `/help` or an unknown command.
    Help,
}

fn classify(line: &str) -> Line<'_> {
    let t = line.trim();
    match t {
        "" => Line::Empty,
        "/clear" | "/reset" => Line::Clear,
        "/exit" | "/quit" | "/bye" => Line::Exit,
        _ if t.starts_with('/') && !t.starts_with("//") && !t.contains(char::is_whitespace) => {
            Line::Help
        }
        // `//text` sends `/text`.
        _ => Line::Say(
            t.strip_prefix('/')
                .filter(|r| r.starts_with('/'))
                .unwrap_or(t),
        ),
    }
}

const HELP: &str =
    "[/clear forgets the history, /exit (or Ctrl-D) ends the chat, Ctrl-C cancels an answer]";

/// The chat state: history and the daemon session that holds its KV.
struct Chat<'a> {
    client: &'a Client,
    model: String,
    priority: String,
    a: &'a ChatArgs,
    json_out: bool,
    /// Whether a person types (stdin is a terminal): errors are shown and the chat goes on.
    interactive: bool,
    /// System message (if any), then user and assistant turns.
    history: Vec<Value>,
    session: String,
    /// Whether the daemon has seen `session` (so there is something to evict).
    session_used: bool,
}

/// How one turn ended.
enum Turn {
    Answered,
    Canceled,
}

/// Runs the chat until end of input, `/exit` or Ctrl-C at the prompt.
pub async fn run(
    client: &Client,
    settings: &Settings,
    a: ChatArgs,
    json_out: bool,
) -> Result<(), CliError> {
    let model = model_or_default(client, settings, a.model.clone()).await?;
    let priority = priority(settings, a.priority)?;
    let interactive = std::io::stdin().is_terminal();
    let mut chat = Chat {
        client,
        model,
        priority,
        a: &a,
        json_out,
        interactive,
        history: Vec::new(),
        session: new_session_id(),
        session_used: false,
    };
    chat.clear_history();
    let mut lines = stdin_lines();
    let mut interrupts = interrupts();
    if interactive && !json_out {
        eprintln!("[chat with {}] {HELP}", chat.model);
    }
    let r = chat.run(&mut lines, &mut interrupts).await;
    chat.evict().await;
    r
}

impl Chat<'_> {
    async fn run(
        &mut self,
        lines: &mut mpsc::UnboundedReceiver<Result<String, String>>,
        interrupts: &mut mpsc::UnboundedReceiver<()>,
    ) -> Result<(), CliError> {
        loop {
            // A Ctrl-C that arrived between answers is not meant for the next one.
            while interrupts.try_recv().is_ok() {}
            if self.interactive {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "> ");
                let _ = err.flush();
            }
            let line = tokio::select! {
                l = lines.recv() => l,
                _ = interrupts.recv() => {
                    if self.interactive {
                        eprintln!();
                    }
                    return Err(CliError::new(Exit::Interrupted, "interrupted"));
                }
            };
            let line = match line {
                None => {
                    if self.interactive {
                        eprintln!();
                    }
                    return Ok(());
                }
                Some(Err(e)) => return Err(CliError::usage(format!("cannot read stdin: {e}"))),
                Some(Ok(l)) => l,
            };
            match classify(&line) {
                Line::Empty => {}
                Line::Exit => return Ok(()),
                Line::Help => eprintln!("{HELP}"),
                Line::Clear => {
                    self.evict().await;
                    self.clear_history();
                    self.session = new_session_id();
                    eprintln!("[history cleared]");
                }
                Line::Say(text) => {
                    self.history.push(json!({"role": "user", "content": text}));
                    match self.turn(interrupts).await {
                        Ok(Turn::Answered) => {}
                        Ok(Turn::Canceled) => {
                            self.history.pop();
                        }
                        Err(e) => {
                            self.history.pop();
                            if !self.interactive {
                                return Err(e);
                            }
                            eprintln!("llorch: {e}");
                        }
                    }
                }
            }
        }
    }

    /// The history with only the system message.
    fn clear_history(&mut self) {
        self.history.clear();
        if let Some(s) = &self.a.system {
            self.history.push(json!({"role": "system", "content": s}));
        }
    }

    /// Sends the history, streams the answer and keeps it in the history.
    async fn turn(
        &mut self,
        interrupts: &mut mpsc::UnboundedReceiver<()>,
    ) -> Result<Turn, CliError> {
        let adm = match self.admit().await {
            Err(e) if session_over(&e) => {
                // The daemon ended the session (TTL or turn limit); the history is here.
                self.session = new_session_id();
                self.admit().await?
            }
            r => r?,
        };
        self.session_used = true;
        let show = if self.json_out {
            Show::Json
        } else {
            Show::Answer
        };
        let followed = tokio::select! {
            f = stream::follow_with(self.client, &adm.task_id, show) => f?,
            _ = interrupts.recv() => {
                match stream::cancel(self.client, &adm.task_id).await {
                    Ok(()) => eprintln!("\n[canceled]"),
                    Err(e) => eprintln!("\n[canceling task {} failed: {e}]", adm.task_id),
                }
                return Ok(Turn::Canceled);
            }
        };
        match followed {
            Followed {
                outcome: Outcome::Completed,
                text,
            } => {
                self.history
                    .push(json!({"role": "assistant", "content": text}));
                Ok(Turn::Answered)
            }
            Followed { outcome, .. } => {
                stream::outcome_result(&adm.task_id, outcome).map(|()| Turn::Answered)
            }
        }
    }

    /// `POST /v1/tasks` for this turn; reports the queue when the task has to wait.
    async fn admit(&self) -> Result<AdmissionResponse, CliError> {
        let task_id = format!("chat-{}", uuid::Uuid::new_v4().simple());
        let mut body = json!({
            "task_id": task_id,
            "model_ref": self.model,
            "priority": self.priority,
            "workload": "chat",
            "messages": self.history,
            "session_id": self.session,
            "max_tokens": self.a.max_tokens,
        });
        if let Some(s) = self.a.seed {
            body["seed"] = json!(s);
        }
        if let Some(t) = self.a.temperature {
            body["temperature"] = json!(t);
        }
        let (adm, v) = super::admit_task(self.client, &body).await?;
        if self.json_out {
            stream::ndjson("admitted", &v);
        } else if adm.queue_position > 0
            || adm.predicted_start_ms >= 1000
            || adm.pool_load.is_some()
        {
            eprintln!("{}", admission_line(&adm));
        }
        Ok(adm)
    }

    /// Frees the daemon session's KV (best effort: the session expires anyway).
    async fn evict(&mut self) {
        if !self.session_used {
            return;
        }
        self.session_used = false;
        let path = format!("/v1/sessions/{}", seg(&self.session));
        let _ = self
            .client
            .call_json(Method::DELETE, &path, None, Some(Duration::from_secs(5)))
            .await;
    }
}

/// Whether admission refused the turn because the daemon ended the session.
fn session_over(e: &CliError) -> bool {
    let code = e.envelope.as_ref().and_then(|v| ErrorView::of(v).code);
    matches!(
        code.as_deref(),
        Some("SESSION_TURNS_EXHAUSTED" | "SESSION_EXPIRED")
    )
}

fn new_session_id() -> String {
    format!("chat-{}", uuid::Uuid::new_v4().simple())
}

/// Lines of stdin, read on a thread of their own (a blocking read must not hold up Ctrl-C or
/// the runtime's shutdown: the thread is not joined).
fn stdin_lines() -> mpsc::UnboundedReceiver<Result<String, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let stop = line.is_err();
            if tx.send(line.map_err(|e| e.to_string())).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// Every Ctrl-C, as a message: one handler for the whole chat, so a Ctrl-C is never lost
/// between two turns' listeners.
fn interrupts() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_messages_or_commands() {
        assert_eq!(classify("  "), Line::Empty);
        assert_eq!(classify(" What is 2+2? \n"), Line::Say("What is 2+2?"));
        assert_eq!(classify("/clear"), Line::Clear);
        assert_eq!(classify("/exit"), Line::Exit);
        assert_eq!(classify("/quit "), Line::Exit);
        assert_eq!(classify("/nope"), Line::Help);
        assert_eq!(classify("//clear"), Line::Say("/clear"));
        assert_eq!(
            classify("/usr/bin is on PATH, why?"),
            Line::Say("/usr/bin is on PATH, why?")
        );
    }

    #[test]
    fn a_session_the_daemon_ended_is_replaced() {
        let e = |code: &str| CliError {
            exit: Exit::Usage,
            message: String::new(),
            http_status: Some(409),
            envelope: Some(json!({"code": code, "message": "m"})),
        };
        assert!(session_over(&e("SESSION_TURNS_EXHAUSTED")));
        assert!(session_over(&e("SESSION_EXPIRED")));
        assert!(!session_over(&e("MODEL_NOT_FOUND")));
    }
}
