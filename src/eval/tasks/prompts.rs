//! A benchmark item as a chat: shot selection, and the user and assistant
//! turns under each protocol.

use super::{letter, Check, Item, Task};
use crate::data::chat::Message;
use crate::eval::Protocol;

/// Up to `k` shots for `item` from `pool` (the task's shot split), per spec §10
/// (`k` = [`Task::num_shots`] by default).
///
/// GSM8K: the first five; MATH: five evenly spaced; MMLU / MMLU-Pro: the first five of the same
/// subject or category; MBPP: the first five with task ids 1–10; HumanEval: none (clean) or the
/// first five (paper). Clean: an item never serves as its own shot, and MATH spaces the shots over
/// what remains. Paper: as the reference, `pool[i * (len / k)]` for MATH and no exclusion (the
/// reference skips a HumanEval or MBPP item that is a shot instead, see [`is_shot`]).
/// Fewer come back when the pool has fewer that fit.
pub fn select_shots<'a>(protocol: Protocol, task: Task, item: &Item, pool: &'a [Item], k: usize) -> Vec<&'a Item> {
    let fits = |s: &Item| match task {
        Task::Mmlu | Task::MmluPro => s.group == item.group,
        Task::Mbpp => s.id.parse::<u32>().is_ok_and(|id| (1..=10).contains(&id)),
        _ => true,
    };
    let own = |s: &Item| protocol == Protocol::Clean && s.question == item.question;
    let eligible: Vec<&Item> = pool.iter().filter(|s| !own(s) && fits(s)).collect();
    let k = k.min(eligible.len());
    match (task, protocol) {
        (Task::Math, Protocol::Clean) => (0..k).map(|i| eligible[i * eligible.len() / k]).collect(),
        (Task::Math, Protocol::Paper) => (0..k).map(|i| eligible[i * (eligible.len() / k)]).collect(),
        _ => eligible[..k].to_vec(),
    }
}

/// Whether `item` is one of its own `shots` by its user turn: the paper's protocol skips such
/// HumanEval and MBPP items (`tasks/humaneval.py:128-129`, `tasks/mbpp.py:59-60`), leaving 159 of
/// HumanEval's 164 problems.
pub fn is_shot(protocol: Protocol, task: Task, item: &Item, shots: &[&Item]) -> bool {
    protocol == Protocol::Paper
        && task.is_code()
        && shots.iter().any(|s| user_turn(protocol, task, s) == user_turn(protocol, task, item))
}

/// The chat for `item`: each shot as a user turn and its worked answer, then the question; no system
/// prompt. Paper HumanEval ends with a partial assistant turn (the `def` line) that the model continues.
pub fn build_messages(protocol: Protocol, task: Task, item: &Item, shots: &[&Item]) -> Vec<Message> {
    let mut messages = Vec::with_capacity(2 * shots.len() + 2);
    for shot in shots {
        messages.push(Message::new("user", user_turn(protocol, task, shot)));
        messages.push(Message::new("assistant", assistant_turn(protocol, task, shot)));
    }
    messages.push(Message::new("user", user_turn(protocol, task, item)));
    if let (Protocol::Paper, Check::HumanEval { context, .. }) = (protocol, &item.check) {
        messages.push(Message::new("assistant", context.clone()));
    }
    messages
}

/// What the user says for `item`.
pub fn user_turn(protocol: Protocol, task: Task, item: &Item) -> String {
    match protocol {
        Protocol::Paper => paper_user_turn(task, item),
        Protocol::Clean => clean_user_turn(task, item),
    }
}

/// What the assistant answers when `item` is a shot.
pub fn assistant_turn(protocol: Protocol, task: Task, item: &Item) -> String {
    match protocol {
        Protocol::Paper => paper_assistant_turn(task, item),
        Protocol::Clean => clean_assistant_turn(task, item),
    }
}

/// The reference's user turns (`tasks/*.py`): MMLU's jinja2 template `Question:\n{q}\nChoices:\n` +
/// `L. choice\n` per option + `\nAnswer:`; MMLU-Pro's the same without `\nAnswer:` (jinja2 drops the
/// template's final newline); MBPP's docstring block with the first test; HumanEval's instruction.
fn paper_user_turn(task: Task, item: &Item) -> String {
    match (task, &item.check) {
        (Task::Mmlu | Task::MmluPro, _) => {
            let choices: String = item.options.iter().enumerate().map(|(i, o)| format!("{}. {o}\n", letter(i))).collect();
            let answer = if task == Task::Mmlu { "\nAnswer:" } else { "" };
            format!("Question:\n{}\nChoices:\n{choices}{answer}", item.question)
        }
        (Task::HumanEval, Check::HumanEval { instruction, .. }) => instruction.clone(),
        (Task::Mbpp, Check::Mbpp { tests, .. }) => {
            format!("\"\"\"\n{}\n{}\n\"\"\"\n", item.question, tests.first().map_or("", String::as_str))
        }
        _ => item.question.clone(),
    }
}

/// The reference's shot answers: GSM8K's verbatim (calculator annotations kept), bare letters for
/// MMLU and MMLU-Pro, HumanEval's `context + canonical_solution`, MBPP's code without fences.
fn paper_assistant_turn(task: Task, item: &Item) -> String {
    match (task, &item.check) {
        (Task::Mmlu | Task::MmluPro, _) => item.reference.clone(),
        (Task::HumanEval, Check::HumanEval { context, .. }) => format!("{context}{}", item.solution),
        _ => item.solution.clone(),
    }
}

fn clean_user_turn(task: Task, item: &Item) -> String {
    match (task, &item.check) {
        (Task::Mmlu | Task::MmluPro, _) => {
            let options: Vec<String> =
                item.options.iter().enumerate().map(|(i, o)| format!("{}. {o}", letter(i))).collect();
            format!("{}\n\n{}", item.question, options.join("\n"))
        }
        (Task::HumanEval, _) => format!("Complete the following Python function.\n```python\n{}```", item.question),
        (Task::Mbpp, Check::Mbpp { tests, .. }) => {
            format!("{}\nYour code should pass this test:\n{}", item.question, tests.first().map_or("", String::as_str))
        }
        _ => item.question.clone(),
    }
}

fn clean_assistant_turn(task: Task, item: &Item) -> String {
    match task {
        // `<<48/2=24>>` are calculator annotations of the dataset, not part of the reasoning.
        Task::Gsm8k => strip_calculator(&item.solution),
        Task::Mmlu | Task::MmluPro if item.solution.is_empty() => format!("The answer is ({}).", item.reference),
        Task::HumanEval | Task::Mbpp => format!("```python\n{}\n```", item.solution.trim_end()),
        _ => item.solution.clone(),
    }
}

fn strip_calculator(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("<<") {
        let Some(end) = rest[p..].find(">>") else { break };
        out.push_str(&rest[..p]);
        rest = &rest[p + end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, group: Option<&str>) -> Item {
        Item {
            id: id.into(),
            question: format!("q{id}"),
            options: vec![],
            solution: String::new(),
            group: group.map(Into::into),
            reference: String::new(),
            check: Check::Number,
        }
    }

    #[test]
    fn shots_follow_the_spec() {
        let pool: Vec<Item> =
            (0..20).map(|i| item(&i.to_string(), Some(if i % 2 == 0 { "even" } else { "odd" }))).collect();
        let ids = |v: Vec<&Item>| v.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        let q = item("99", Some("odd"));
        assert_eq!(ids(select_shots(Protocol::Clean, Task::Gsm8k, &q, &pool, Task::Gsm8k.num_shots(Protocol::Clean))), ["0", "1", "2", "3", "4"]);
        assert_eq!(ids(select_shots(Protocol::Clean, Task::Math, &q, &pool, Task::Math.num_shots(Protocol::Clean))), ["0", "4", "8", "12", "16"]);
        assert_eq!(ids(select_shots(Protocol::Clean, Task::Mmlu, &q, &pool, Task::Mmlu.num_shots(Protocol::Clean))), ["1", "3", "5", "7", "9"]);
        assert_eq!(ids(select_shots(Protocol::Clean, Task::HumanEval, &q, &pool, Task::HumanEval.num_shots(Protocol::Clean))), Vec::<String>::new());
        // MBPP draws from task ids 1-10 and never shows an item as its own shot.
        assert_eq!(ids(select_shots(Protocol::Clean, Task::Mbpp, &pool[2], &pool, Task::Mbpp.num_shots(Protocol::Clean))), ["1", "3", "4", "5", "6"]);
    }

    #[test]
    fn messages_alternate_and_end_with_the_question() {
        let mut shot = item("1", None);
        shot.solution = "2 + 2 = <<2+2=4>>4\n#### 4".into();
        let q = item("2", None);
        let m = build_messages(Protocol::Clean, Task::Gsm8k, &q, &[&shot, &shot]);
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(m[1].content, "2 + 2 = 4\n#### 4");
        assert_eq!(m[4].content, "q2");
    }
}
