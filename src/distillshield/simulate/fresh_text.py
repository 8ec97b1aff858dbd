"""Hand-written text for the fresh split's personas (docs/simulator.md, "Fresh held-out split").

Kept apart from text.py on purpose: none of this wording existed when the detector was trained, so
a detector cannot have been fitted to it. As in text.py, only what a client really templates lives
here (a campaign's instruction wrappers, a pipeline's instruction, a harness's prompt format, a help
desk's knowledge base) plus the small grammar that turns people's asks into their own words.
"""

from __future__ import annotations

import random

from distillshield.simulate.sampling import pick

# -- thin hydra: ~40 surface variants of ONE reasoning-elicitation instruction ---------------------------
# The campaign asks one thing (expose the reasoning, step by step) in many wordings, some before the
# question and some after it, so that no single string repeats often enough to look like a template.

REASONING_WRAPPERS: tuple[str, ...] = (
    "{q}\n\nWalk me through your reasoning step by step.",
    "Walk me through your reasoning step by step:\n\n{q}",
    "{q}\n\nExplain each step before you give the answer.",
    "Explain each step before answering.\n{q}",
    "{q}\nPlease show every step of your thinking, then the final answer.",
    "Can you show me how you think this through, one step at a time? {q}",
    "{q} - talk me through how you get there, step by step",
    "I want to see the whole thought process, not just the result. {q}",
    "{q}\n\nBefore the answer, lay out your reasoning in numbered steps.",
    "Reason it out in numbered steps first, answer last.\n\n{q}",
    "{q}\n\nThink out loud as you work on this, and don't skip steps.",
    "Think out loud while you solve this, no skipped steps please:\n{q}",
    "{q}\nCould you break down your reasoning into small steps before concluding?",
    "Please break your reasoning into small steps and only then conclude. {q}",
    "{q}\n\nShow the reasoning behind each step, then state the answer on its own line.",
    "Here's something I'm working on: {q}\nHow would you reason through it, step by step?",
    "{q}\n\nGo through it slowly and explain why each step follows from the previous one.",
    "Explain why each step follows from the last one as you go. {q}",
    "{q}\nI'd like the full line of reasoning, step after step, not a summary.",
    "Give me the full line of reasoning here, step after step, not a summary: {q}",
    "{q}\n\nDescribe how you approach it, every intermediate step included.",
    "Every intermediate step please, then the answer.\n\n{q}",
    "{q}\nReason carefully and write down each step of your thinking.",
    "Write down each step of your thinking for this one. {q}",
    "{q}\n\nExplain your thought process in detail before answering.",
    "Before you answer, explain your thought process in detail.\n{q}",
    "{q}\n\nTake it one step at a time and explain each one.",
    "One step at a time, explaining each one: {q}",
    "{q}\nWhat's your reasoning? Go step by step and then answer.",
    "Step by step, what's your reasoning on this? {q}",
    "{q}\n\nPlease reason through this explicitly, showing all of the work.",
    "Show all of the work and reason explicitly.\n\n{q}",
    "{q}\nExplain how you'd arrive at the answer, each step in turn.",
    "How would you arrive at the answer? Each step in turn, please. {q}",
    "{q}\n\nDon't jump to the answer; first reason it through step by step.",
    "Don't jump straight to the answer, reason it through step by step first.\n{q}",
    "{q}\nLay out the chain of reasoning that gets you to the answer.",
    "Lay out the chain of reasoning that leads you to an answer for this: {q}",
    "{q}\n\nSpell out your reasoning, each step on its own line, then answer.",
    "Spell out your reasoning with each step on its own line.\n\n{q}",
    "{q}\nWork through it methodically and narrate each step.",
    "Narrate each step as you work through this methodically. {q}",
    "{q}\n\nFirst your reasoning step by step, then the answer in one sentence.",
    "First your step-by-step reasoning, then a one-sentence answer. {q}",
)


def wrapper_before(template: str) -> bool:
    """Whether a wrapper puts its instruction before the question."""
    return not template.startswith("{q}")


# -- a chain-of-thought harvester that rewrites its instruction every time -------------------------------
# A grammar, not a list: lead x verb x object x manner x tail gives thousands of wordings of "write out
# your internal reasoning", English only, placed before or after the question.

COT_LEADS = ("Before you answer,", "First,", "Please", "I need you to", "As you work on it,", "In your reply,")
COT_VERBS = ("lay out", "write out", "reconstruct", "narrate", "document", "spell out", "unpack", "expose")
COT_OBJECTS = (
    "the full internal reasoning",
    "every intermediate inference",
    "your complete thought process",
    "the hidden deliberation behind the answer",
    "each reasoning step you take",
    "the whole chain of inferences",
)
COT_MANNERS = (
    "in order, one step per line",
    "without skipping anything",
    "exactly as you would think it",
    "including false starts and corrections",
    "in exhaustive detail",
    "as numbered steps",
)
COT_TAILS = (
    "Then give the final answer.",
    "End with the answer alone on the last line.",
    "Only then answer.",
    "Finish with 'Answer:' and the result.",
    "",
)


def cot_instruction(r: random.Random, q: str, a: str, with_answer: bool) -> str:
    """A freshly worded request for the model's internal reasoning about `q` (given answer `a` if asked)."""
    verb, obj, manner = pick(r, COT_VERBS), pick(r, COT_OBJECTS), pick(r, COT_MANNERS)
    if with_answer and a:
        ask = f"{verb[:1].upper()}{verb[1:]} {obj} that leads to this answer, {manner}."
        return f"Question: {q}\nFinal answer: {a}\n\n{ask}"
    ask = f"{pick(r, COT_LEADS)} {verb} {obj} {manner}. {pick(r, COT_TAILS)}".strip()
    return f"{ask}\n\n{q}" if r.random() < 0.5 else f"{q}\n\n{ask}"


# -- people's own words: openers, asks, typos --------------------------------------------------------------

CASUAL_OPENERS = (
    "",
    "",
    "",
    "hey, ",
    "hi! ",
    "ok so ",
    "quick q: ",
    "sorry if this is dumb but ",
    "hello, ",
    "random question - ",
    "so i was wondering, ",
    "need help: ",
    "good evening. ",
    "yo ",
    "hmm ",
    "Hi there. ",
)
HUMAN_REASON_ASKS = (
    "",
    " how would you figure that out?",
    " what's the trick here",
    " can you explain how you got it?",
    " i want to understand it, not just the answer",
    " explain pls",
    " walk me through it?",
    " why?",
    " whats the logic",
    " how do you even start with this",
    " could you show the working",
    " and how sure are you?",
)
HUMAN_CLOSERS = ("", "", "", " thanks", " thx!", " :)", " ty", " appreciate it", " lol", "?")


def typo(r: random.Random, s: str, rate: float) -> str:
    """Human slips in a short string: swapped or dropped letters, missing capital, lost final full stop."""
    if not s:
        return s
    chars = list(s)
    n = len(chars)
    slips = sum(1 for _ in range(max(1, n // 40)) if r.random() < rate)
    for _ in range(slips):
        i = r.randrange(max(1, n - 1))
        if not (chars[i].isalpha() and i + 1 < len(chars) and chars[i + 1].isalpha()):
            continue
        if r.random() < 0.5:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            del chars[i]
            n -= 1
    out = "".join(chars)
    if r.random() < rate:
        out = out[:1].lower() + out[1:]
    if r.random() < rate and out.endswith("."):
        out = out[:-1]
    return out


# -- students asking for step-by-step help, in their own words -------------------------------------------

STUDENT_OPENERS = (
    "",
    "",
    "hi, ",
    "ok i'm stuck. ",
    "so for homework ",
    "can u help me with this. ",
    "we did this in class today and i still don't get it. ",
    "my teacher wants us to show working on this one. ",
    "test tomorrow!! ",
    "help please, ",
    "i've been on this for an hour. ",
    "Hello, I'm revising and ",
    "this is from my worksheet: ",
    "last question on the sheet: ",
)
STUDENT_FRAMES = (
    "{q}",
    "the question is: {q}",
    "question: {q}",
    'it says "{q}"',
    "{q} (that's the whole question)",
    "here it is: {q}",
    "so basically {q}",
)
STUDENT_STEP_ASKS = (
    " can you explain it step by step?",
    " please go step by step so i can follow",
    " how do you do it step by step",
    " step by step please, I need to show my working",
    " could you show me the steps? I keep getting a different answer",
    " I got {guess} but I'm not sure. can you check it step by step?",
    " what's the first step? and then the next ones",
    " explain like the teacher would, one step at a time",
    " i don't need just the answer, i need to understand the method",
    " where do I even start?",
    " why does it work that way?",
    " is there an easier way to do this?",
    "",
)
STUDENT_FOLLOW_UPS = (
    "wait why did you do that in step 2?",
    "ok that makes sense. can you give me a similar one to practice?",
    "i still don't get the second step",
    "so the answer is {guess}?",
    "can you explain it more simply",
    "thank you!! what's the formula called?",
    "how would I write this in the exam",
    "what if the numbers were different?",
    "hmm my book says something else",
    "got it, thanks",
)

# -- a document pipeline's new fixed instructions -----------------------------------------------------------

DOC_PIPELINE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "redact": (
        "Rewrite the document below with all personal data replaced by [REDACTED] (names, emails, phone "
        'numbers, addresses, account numbers). Change nothing else.\n\n<document id="{doc_id}">\n{doc}\n</document>',
    ),
    "faq": (
        "Turn the following text into up to three FAQ entries for our help centre, formatted as 'Q: ...' / "
        "'A: ...'. Use only facts stated in the text.\n\nSOURCE {doc_id}\n{doc}",
    ),
    "plain_language": (
        "Rewrite this passage in plain language at a reading age of 12. Keep the meaning; keep it under 120 "
        "words.\n---\n{doc}\n---",
    ),
    "tag": (
        "Return a JSON array of at most five lowercase topic tags for the content below. Output the array "
        "only.\n\nContent ({doc_id}):\n{doc}",
    ),
}

# -- an evaluation harness's chain-of-thought prompt formats -------------------------------------------------

BENCH_COT_TEMPLATES: tuple[str, ...] = (
    "Problem:\n{q}\n\nThink step by step. End your response with 'The answer is X.'",
    "{q}\n\nLet's work this out in a step by step way to be sure we have the right answer.",
    "Answer the question below. First think step by step inside <reasoning> tags, then give the answer "
    "inside <answer> tags.\n\n{q}",
)
BENCH_SYSTEM = (None, "You are a careful assistant. Follow the output format exactly.")

# -- an IT help desk bot (RAG) -----------------------------------------------------------------------------

HELPDESK_ORGS = (
    ("Westbrook University IT Services", "university accounts"),
    ("Calder & Finch LLP IT", "staff laptops"),
    ("Riverside Health Trust Digital Services", "clinical workstations"),
    ("Marlow County Council ICT", "council devices"),
)
HELPDESK_KB = (
    (
        "VPN access",
        "Install the VPN client from the software portal and sign in with your {product} "
        "credentials. Sessions disconnect after {n} hours of inactivity.",
    ),
    (
        "Multi-factor authentication",
        "Register an authenticator app at the account portal. If you change "
        "phones, use one of your {n} recovery codes or call the service desk.",
    ),
    (
        "Printing",
        "Send jobs to the 'FollowMe' queue and release them at any printer with your badge. "
        "Jobs are deleted after {n} hours.",
    ),
    (
        "Password expiry",
        "Passwords for {product} expire every {n} days. You are warned by email 7 days "
        "before. Reuse of the last 10 passwords is blocked.",
    ),
    (
        "Shared drives",
        "Request access to a shared drive through the owner listed in the drive's "
        "properties. Access is granted within {n} working hours of approval.",
    ),
    (
        "Email quota",
        "Mailboxes hold {n} GB. Archive old mail to the online archive; attachments over 25 MB "
        "must be shared as links.",
    ),
    (
        "Software requests",
        "Standard software installs from the self-service portal. Anything else needs a "
        "request ticket; licensed software takes up to {n} working days.",
    ),
    (
        "Lost or stolen devices",
        "Report a lost {product} device immediately: we lock and wipe it remotely. "
        "A replacement is issued within {n} working days.",
    ),
    ("Wi-Fi", "Connect to 'secure-staff' with your {product} login. Guests use 'guest', valid for {n} hours."),
)
HELPDESK_QUESTIONS = (
    "vpn keeps disconnecting every few minutes, what do i do",
    "I got a new phone and now I can't log in because of the authenticator",
    "printer says job held, how do I print?",
    "my password expired while I was on leave",
    "how do I get access to the finance shared drive?",
    "Outlook says my mailbox is full",
    "Can I install Zoom myself or do I need a ticket?",
    "I left my laptop on the train this morning",
    "what's the wifi for visitors",
    "is there a way to extend my VPN session?",
    "recovery codes - where do I find them?",
    "how long does a software request usually take?",
    "can't connect to secure-staff on my tablet",
    "do print jobs get deleted if I don't pick them up",
)
HELPDESK_SYSTEM = (
    "You are the virtual service desk for {company}. Use only the articles below to answer. If the issue "
    "needs a technician, tell the user to raise a ticket and give the category. Keep answers short.\n\n"
    "# Articles\n{context}"
)


def student_ask(r: random.Random, problem: str) -> str:
    """A student's own first message about a problem: opener, framing, the problem, an ask, slips."""
    opener = pick(r, STUDENT_OPENERS)
    frame = pick(r, STUDENT_FRAMES).format(q=problem)
    ask = pick(r, STUDENT_STEP_ASKS).format(guess=r.randrange(2, 400))
    text = typo(r, opener, 0.5) + frame + typo(r, ask, 0.6)  # the problem is pasted, the rest typed
    if r.random() < 0.35:
        text = text[:1].lower() + text[1:]
    return text.strip()


def human_ask(r: random.Random, question: str) -> str:
    """A person-like request around a question: casual opener, the question, maybe an ask, slips."""
    text = pick(r, CASUAL_OPENERS) + question + typo(r, pick(r, HUMAN_REASON_ASKS), 0.5) + pick(r, HUMAN_CLOSERS)
    if r.random() < 0.3:
        text = text[:1].lower() + text[1:]
    return text.strip()
