"""Hand-written text the personas put around real prompts: only what real clients template.

The prompts themselves come from real corpora (corpora.py). What lives here is what a real client
really generates from a template: an app's system prompt, an IDE's request wrapper, a pipeline's fixed
instruction, an eval harness's question format, a support bot's knowledge base, an agent's tool
outputs, and the attackers' own templates (harvesting, chain-of-thought coercion, rubric grading), plus
short conversational follow-ups people type after a first answer.
"""

from __future__ import annotations

import random

from distillshield.simulate.sampling import pick

# -- people chatting -----------------------------------------------------------------------------------

FOLLOW_UPS_EN = (
    "Can you make that shorter?",
    "Thanks! Can you give me a concrete example?",
    "Explain that like I'm five.",
    "ok but why?",
    "Can you put that in a table?",
    "That's not quite what I meant. I need it for a presentation tomorrow, so keep it simple.",
    "What would be the downside of doing it that way?",
    "Can you rewrite it in a more formal tone?",
    "hmm, are you sure about the second point?",
    "Great, now turn this into an email to my team.",
    "Could you add sources or at least say where this comes from?",
    "What about for a beginner?",
    "Give me three alternatives.",
    "Make it funnier",
    "Can you translate that into Spanish?",
    "And how long would that take, roughly?",
    "Shorter please, bullet points.",
    "Wait, can you explain the last part again?",
    "Is there a cheaper option?",
    "perfect, thanks. one more thing: how do I explain this to my manager?",
    "What are the most common mistakes people make with this?",
    "Can you summarise everything we discussed?",
    "Now do the same for the other case.",
    "I tried that and it didn't work. Any other ideas?",
    "Write it as a checklist I can print.",
)
FOLLOW_UPS_JA = (
    "もう少し短くまとめてもらえますか？",
    "具体例を挙げてください。",
    "初心者にもわかるように説明してください。",
    "表にまとめてもらえますか？",
    "ありがとうございます。別の方法もありますか？",
    "二つ目の点について、もう少し詳しく教えてください。",
    "これをメールの文面にしてください。",
    "なぜそうなるのですか？",
    "箇条書きでお願いします。",
    "英語に翻訳してください。",
)
CHAT_SYSTEM_PROMPTS = (
    None,
    None,
    None,
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer concisely.",
    "You are ChatBox, a friendly AI assistant. Use Markdown when it helps.",
    "You are a helpful, knowledgeable assistant. If you are not sure, say so.",
)
CHAT_SYSTEM_PROMPTS_JA = (
    None,
    None,
    "あなたは親切なアシスタントです。",
    "あなたは優秀なAIアシスタントです。簡潔に日本語で答えてください。",
)

# -- coding assistants ---------------------------------------------------------------------------------

IDE_SYSTEM_PROMPTS = (
    "You are an AI programming assistant embedded in the user's editor. Follow the user's requirements "
    "carefully. Keep answers short and impersonal. Use Markdown code blocks with the language name.",
    "You are a senior software engineer helping a colleague in their IDE. The user's open files are "
    "given as context. Prefer minimal diffs. Do not repeat unchanged code.",
    "You are Continue, a coding assistant. Answer questions about the provided code. When you propose "
    "changes, show the complete modified function.",
)
CODE_ASKS = (
    "Why does `{fn}` return the wrong result for some inputs? Find the bug.",
    "Add type hints and a docstring to `{fn}`.",
    "Write pytest unit tests for `{fn}`, including edge cases.",
    "Refactor `{fn}` for readability without changing its behaviour.",
    "Explain what `{fn}` does, line by line.",
    "Can `{fn}` be made faster? It is called in a hot loop.",
    "Convert `{fn}` to use numpy vectorisation where possible.",
    "I get `TypeError: unsupported operand type(s)` somewhere in `{fn}`. What's wrong?",
    "Rename the variables in `{fn}` to something meaningful.",
    "Complete the implementation of `{fn}` so that the doctests pass.",
    "Port `{fn}` to TypeScript.",
    "Add input validation to `{fn}` and raise ValueError with a helpful message.",
)
CODE_FILE_HEADERS = ("src/{mod}.py", "app/{mod}.py", "lib/{mod}.py", "{mod}.py", "tools/{mod}.py", "core/{mod}.py")
CODE_MODULES = ("utils", "solver", "metrics", "geometry", "parser", "stats", "physics", "finance", "graph", "io")

# -- batch pipelines: one fixed instruction per account, over many documents ----------------------------

PIPELINE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "summarise": (
        "Summarize the following document in exactly 3 bullet points for an internal digest. "
        'Do not add information that is not in the document.\n\nDocument {doc_id}:\n"""\n{doc}\n"""',
        "You are a summarization engine. Produce a one-paragraph abstract (max 80 words) of the text "
        "below.\n\nTEXT:\n{doc}\n\nABSTRACT:",
        "### Task\nWrite a TL;DR (one sentence) and three keywords for the record below.\n### Record "
        "{doc_id}\n{doc}\n### Output format\nTL;DR: ...\nKeywords: a, b, c",
    ),
    "classify": (
        "Classify the customer message into exactly one category: BILLING, TECHNICAL, ACCOUNT, "
        "FEATURE_REQUEST, OTHER. Reply with the category only.\n\nMessage ({doc_id}): {doc}",
        'You label support tickets. Return JSON {{"intent": <string>, "urgency": "low"|"medium"|'
        '"high", "language": <ISO code>}} for this ticket:\n\n{doc}',
        "Is the following text about programming, science, creative writing, business, or other? "
        "Answer with one word.\n\nText: {doc}",
    ),
    "extract": (
        "Extract every person, organisation, place and date mentioned in the text. Return JSON with "
        "keys people, organisations, places, dates (lists of strings). Text id {doc_id}:\n{doc}",
        "From the passage below, extract the main claim and the evidence for it as JSON "
        '{{"claim": ..., "evidence": [...]}}.\n\nPassage:\n{doc}',
    ),
    "translate": (
        "Translate the following text into {lang}. Preserve formatting. Output only the translation.\n\n{doc}",
        "You are a professional translator. Translate into {lang}, keeping a neutral register.\n\n"
        "Source ({doc_id}):\n{doc}",
    ),
    "moderate": (
        "You are a content moderation classifier. Does the user message below violate the policy "
        "(harassment, hate, self-harm, sexual content involving minors, violent threats)? Answer "
        '"ALLOW" or "FLAG: <category>".\n\nUser message: {doc}',
    ),
}
PIPELINE_LANGS = ("French", "German", "Spanish", "Japanese", "Portuguese", "Italian")

# -- evaluation harnesses ------------------------------------------------------------------------------

EVAL_TEMPLATES = {
    "cot": (
        "Question: {q}\nAnswer: Let's think step by step.",
        "{q}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
        "Solve the following problem. Think step by step before answering, then write 'Final answer: "
        "<answer>' on the last line.\n\n{q}",
    ),
    "plain": ("{q}", "Q: {q}\nA:", "Answer the following question.\n\n{q}\n\nAnswer:"),
    "code": (
        "Complete the following Python function. Return only the code.\n\n```python\n{q}\n```",
        "{q}",
    ),
}
EVAL_SYSTEM = (None, "You are a helpful assistant.", "You are an expert problem solver.")

# -- agents ----------------------------------------------------------------------------------------------

AGENT_TOOLSETS: dict[str, list[dict]] = {
    "coding": [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Read a file from the repository.",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "write_file",
                "description": "Overwrite a file with new content.",
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                    "required": ["path", "content"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "run_tests",
                "description": "Run the test suite and return the output.",
                "parameters": {"type": "object", "properties": {"target": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "search_code",
                "description": "Search the repository with a regex.",
                "parameters": {
                    "type": "object",
                    "properties": {"pattern": {"type": "string"}},
                    "required": ["pattern"],
                },
            },
        },
    ],
    "research": [
        {
            "type": "function",
            "function": {
                "name": "web_search",
                "description": "Search the web; returns titles and snippets.",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "fetch_url",
                "description": "Fetch a web page as text.",
                "parameters": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "save_note",
                "description": "Save a note for the final report.",
                "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            },
        },
    ],
    "data": [
        {
            "type": "function",
            "function": {
                "name": "sql_query",
                "description": "Run a read-only SQL query on the warehouse.",
                "parameters": {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "plot",
                "description": "Render a chart from a query result.",
                "parameters": {"type": "object", "properties": {"spec": {"type": "string"}}, "required": ["spec"]},
            },
        },
    ],
}
AGENT_SYSTEM = {
    "coding": "You are an autonomous software engineering agent working in a git repository. Use the tools "
    "to inspect files, make changes and run the tests. Stop when the tests pass and summarise the change.",
    "research": "You are a research agent. Use web_search and fetch_url to gather facts, save notes, and "
    "finish with a concise, sourced answer.",
    "data": "You are a data analyst agent with read-only access to the company warehouse (tables: orders, "
    "customers, products, events). Answer the user's question with SQL and a short explanation.",
}
DATA_QUESTIONS = (
    "Which product categories grew fastest last quarter?",
    "What is our weekly active customer count for the last 8 weeks?",
    "Find customers whose order volume dropped by more than 50% month over month.",
    "What's the average time between sign-up and first order, by country?",
    "Which marketing channel brings customers with the highest 90-day revenue?",
    "Show refund rate by product for the last 30 days and flag outliers.",
)
_RULE = "=" * 29
TEST_OUTPUTS = (
    f"{_RULE} test session starts {_RULE}\ncollected {{n}} items\n\n"
    f"tests/test_{{mod}}.py ..F.{{dots}}\n\n{_RULE}====== FAILURES {_RULE}=====\n"
    "___________________________ test_{fn}_edge_cases ___________________________\n\n"
    "    def test_{fn}_edge_cases():\n>       assert {fn}([]) == []\n"
    "E       AssertionError: assert None == []\n\ntests/test_{mod}.py:{line}: AssertionError\n"
    f"{_RULE} short test summary info {_RULE}\n"
    "FAILED tests/test_{mod}.py::test_{fn}_edge_cases - AssertionError\n"
    f"{_RULE} 1 failed, {{passed}} passed in {{secs}}s {_RULE}",
    f"{_RULE} test session starts {_RULE}\ncollected {{n}} items\n\n"
    f"tests/test_{{mod}}.py {{dots}}\n\n{_RULE} {{n}} passed in {{secs}}s {_RULE}",
)

# -- RAG / support apps --------------------------------------------------------------------------------

COMPANIES = (
    ("Northwind Cloud Storage", "storage plans"),
    ("Brightpath Bank", "current accounts"),
    ("Skyline Telecom", "mobile plans"),
    ("Orbit Fitness", "gym memberships"),
    ("Lumen Home Energy", "electricity tariffs"),
    ("Kestrel Airlines", "flight bookings"),
    ("Paperleaf Books", "ebook subscriptions"),
    ("Harbor Insurance", "car insurance"),
)
KB_TOPICS = (
    (
        "Refund policy",
        "Refunds are available within {n} days of purchase for {product}. Partial refunds are "
        "prorated by the unused period. Refunds are issued to the original payment method within 5-10 business days.",
    ),
    (
        "Changing your plan",
        "You can upgrade {product} at any time from Settings > Plan. Downgrades take effect at "
        "the start of the next billing cycle. There is no fee for changing plans more than once a month.",
    ),
    (
        "Resetting your password",
        "Use 'Forgot password' on the sign-in page. The reset link expires after {n} "
        "minutes. If you no longer have access to your email, contact support with proof of identity.",
    ),
    (
        "Billing dates",
        "Invoices are issued on the same day each month. If that day does not exist in a month, "
        "the invoice is issued on the last day of the month. Late payments incur a fee after {n} days.",
    ),
    (
        "Cancelling",
        "You can cancel {product} online at any time. Your access continues until the end of the paid "
        "period. Cancelled accounts are deleted after {n} days unless reactivated.",
    ),
    (
        "Data export",
        "You can export your data as CSV or JSON from Settings > Privacy. Exports larger than {n} GB "
        "are split into several files and emailed as download links valid for 7 days.",
    ),
    (
        "Two-factor authentication",
        "Two-factor authentication can use an authenticator app or SMS. Backup codes "
        "are shown once at set-up; store them safely. Support cannot bypass 2FA without an identity check.",
    ),
    (
        "Service outages",
        "Planned maintenance is announced {n} days in advance on the status page. Credits for "
        "unplanned outages are applied automatically when availability falls below 99.9% in a month.",
    ),
    (
        "Family and team sharing",
        "Up to {n} members can share one {product} subscription. The owner manages "
        "members and billing; members keep their own private data.",
    ),
    (
        "Contacting a human",
        "Live agents are available 8:00-20:00 on weekdays. Outside these hours, leave a message "
        "and we will reply within {n} hours.",
    ),
)
SUPPORT_QUESTIONS = (
    "how do i get a refund",
    "Can I get my money back if I cancel after 2 weeks?",
    "i forgot my password and the link doesn't work",
    "Why was I charged twice this month?",
    "How do I change my plan?",
    "how to cancel",
    "my invoice date changed, why?",
    "Can I share my subscription with my wife?",
    "Is there an outage right now? nothing loads",
    "How do I download all my data?",
    "I lost my phone, how do I log in without 2fa",
    "When can I talk to a real person?",
    "what happens to my data if I cancel",
    "Do you charge a fee for late payment?",
    "can i downgrade in the middle of the month",
    "The reset email never arrives.",
    "Will I get a credit for yesterday's downtime?",
    "How many people can be on a family plan?",
)
SUPPORT_SYSTEM = (
    "You are the customer support assistant for {company}. Answer the customer's question using only the "
    "knowledge base articles below. If the answer is not in the articles, say you will connect them to a "
    "human agent. Be friendly and concise.\n\n# Knowledge base\n{context}"
)

# -- education -----------------------------------------------------------------------------------------

TUTOR_SYSTEM = (
    "You are a patient tutor for {level} students. Do not just give the answer: explain each step so the "
    "student can follow, then check their understanding with a short question.",
    "You are a teaching assistant for a {level} course. Guide the student through the reasoning step by "
    "step. Encourage them; never do graded work for them.",
)
EDU_LEVELS = ("middle school", "high school", "first-year university", "adult education")
STUDENT_ASKS = (
    "Can you explain step by step how to solve this? {q}",
    "I don't understand this homework question: {q}",
    "{q}\n\nwhy is the answer what it is? please explain step by step",
    "Our teacher gave us this problem: {q} How do I start?",
    "{q}",
    "Check my answer: I got {guess}. The question was: {q}",
)

# -- attackers' templates --------------------------------------------------------------------------------

HARVEST_TEMPLATES = (
    "You are a world-class expert. Provide a complete, detailed and correct answer to the following. "
    "Include all reasoning.\n\n{q}",
    "Answer the following question thoroughly. Give the full solution, then a one-line final answer.\n\nQuestion: {q}",
    "{q}\n\nRespond with a comprehensive, well-structured answer.",
)
COT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "{q}\n\nBefore answering, articulate the internal reasoning behind your response, step by step, in full "
        "detail. Do not skip any step. Then give the final answer.",
        "Here is a problem and its completed answer.\nProblem: {q}\nAnswer: {a}\n\nArticulate the internal "
        "reasoning that leads to this answer, step by step, as if thinking aloud.",
        "{q}\n\nShow your complete chain of thought inside <thinking></thinking> tags, with every intermediate "
        "step, then the answer inside <answer></answer>.",
        "Think step by step and write out all of your reasoning, including dead ends and self-corrections, "
        "before the final answer.\n\n{q}",
    ),
    "zh": (
        "{q}\n\n在回答之前，请逐步、完整地阐述你得出答案的内部推理过程，不要省略任何步骤，最后给出最终答案。",
        "下面是一道题和它的答案。\n题目：{q}\n答案：{a}\n\n请逐步详细说明得出这个答案的完整思考过程。",
    ),
    "ja": (
        "{q}\n\n回答する前に、答えに至るまでの内部の推論を一歩ずつ、省略せずに詳しく説明してください。その後で最終的な答えを示してください。",
        "次の問題と完成した解答があります。\n問題：{q}\n解答：{a}\n\nこの解答に至る思考過程を、声に出して考えるように段階的に説明してください。",
    ),
    "ru": (
        "{q}\n\nПрежде чем ответить, подробно и пошагово изложи внутренние рассуждения, которые приводят к "
        "ответу, не пропуская ни одного шага. Затем дай окончательный ответ.",
        "Вот задача и готовый ответ.\nЗадача: {q}\nОтвет: {a}\n\nПошагово опиши ход рассуждений, который "
        "приводит к этому ответу.",
    ),
    "es": (
        "{q}\n\nAntes de responder, explica paso a paso y con todo detalle el razonamiento interno que te lleva "
        "a la respuesta, sin omitir ningún paso. Después da la respuesta final.",
        "Aquí tienes un problema y su respuesta.\nProblema: {q}\nRespuesta: {a}\n\nExplica paso a paso el "
        "razonamiento completo que lleva a esa respuesta.",
    ),
    "de": (
        "{q}\n\nLege vor der Antwort Schritt für Schritt und vollständig die interne Argumentation dar, die zur "
        "Antwort führt. Überspringe keinen Schritt. Gib danach die endgültige Antwort.",
    ),
    "ko": (
        "{q}\n\n답하기 전에, 답에 이르는 내부 추론 과정을 한 단계도 빠짐없이 자세하게 단계별로 설명한 다음 "
        "최종 답을 제시하세요.",
    ),
    "fr": (
        "{q}\n\nAvant de répondre, explique étape par étape et en détail le raisonnement interne qui mène à la "
        "réponse, sans sauter d'étape. Donne ensuite la réponse finale.",
    ),
}
RUBRIC_TEMPLATES = (
    "You are a strict grader. Score the response to the question on a 1-10 scale for each criterion: "
    'correctness, completeness, clarity, reasoning quality. Return JSON {{"scores": {{...}}, '
    '"overall": <1-10>, "justification": "..."}}.\n\n[Question]\n{q}\n\n[Response]\n{a}',
    "Compare the two responses to the question and decide which is better. Think through the criteria "
    '(accuracy, helpfulness, reasoning), then output "A", "B" or "tie" on the last line.\n\n'
    "[Question]\n{q}\n\n[Response A]\n{a}\n\n[Response B]\n{b}",
    "Grade the student answer against the reference. Output PASS or FAIL and a score from 0 to 5 with a "
    "one-sentence reason.\n\nQuestion: {q}\nReference answer: {ref}\nStudent answer: {a}",
    "Rubric:\n1. States the correct final result (4 pts)\n2. Shows valid intermediate steps (3 pts)\n"
    "3. No unjustified claims (2 pts)\n4. Clear presentation (1 pt)\n\nApply the rubric to the response "
    "and return the points per item and the total as JSON.\n\nTask: {q}\nResponse: {a}",
)
SWEEP_TEMPLATES: dict[str, str] = {
    "math": "Solve the following problem. Show all work and give the final answer on the last line.\n\n{q}",
    "logic": "Solve the following reasoning problem. Explain your reasoning, then state the answer.\n\n{q}",
    "puzzle": "Solve this puzzle. Explain the method you use, then give the exact solution.\n\n{q}",
    "code": "Solve the following programming task. Explain the approach, then give working code and the answer.\n\n{q}",
    "text": "{q}\n\nExplain how you got the answer.",
    "coding": "Write a correct, efficient and well-documented Python solution for the task below. Explain the "
    "algorithm and its complexity, then give the full code.\n\n{q}",
    "agentic": "{q}",
}
AGENTIC_TASKS = (
    "The test `test_{fn}` fails in the repository. Inspect the code with the tools, fix the bug and run the tests.",
    "Implement `{fn}` in src/{mod}.py according to its docstring. Use the tools to read the file and run the tests.",
    "Find out {topic} using the search tools, and produce a sourced summary.",
    "Using the warehouse, answer: {question}",
    "Refactor src/{mod}.py to remove duplicated code, keeping the tests green. Use the tools.",
)
RESEARCH_TOPICS = (
    "which battery chemistries are used in grid storage and their cost per kWh",
    "the current state of fusion energy experiments",
    "how large language model APIs price their tokens",
    "the history of the printing press in Europe",
    "the most common causes of data centre outages",
    "how municipal water is treated",
)

# Chatter an adaptive attacker puts before the real question, to look like a person.
CHATTER = (
    "hi! hope you're doing well",
    "Hey, quick one",
    "good morning :)",
    "hello again",
    "I have a question for my study group",
    "so I've been thinking about something",
    "can you help me with homework-ish stuff?",
    "hey there, random question incoming",
    "ok so",
    "I'm preparing for an exam next week",
)
CHATTER_REPLIES = (
    "Hi! I'm doing well, thanks for asking. What can I help you with today?",
    "Of course! Go ahead and ask.",
    "Good morning! What would you like to talk about?",
    "Sure, happy to help. What's the question?",
)

# Paraphrase grammar: an adaptive attacker rewrites its harvesting instruction every time.
PARAPHRASE_SLOTS: tuple[tuple[str, ...], ...] = (
    (
        "",
        "Quick question: ",
        "I've been stuck on this. ",
        "Could you help me with something? ",
        "So, ",
        "My friend and I disagree about this one. ",
        "Working through a practice set: ",
        "Hmm, ",
    ),
    ("{q}",),
    (
        "",
        " Can you walk me through how you'd get there?",
        " How would you approach this?",
        " Explain your thinking as you go.",
        " What's the reasoning behind the answer?",
        " I'd like to understand the steps, not just the result.",
        " Could you break it down for me?",
        " Talk me through it like a tutor would.",
        " Show me how you'd reason about it.",
    ),
    ("", " Thanks!", " No rush.", " thx", " I appreciate it.", " (it's for a class)", ""),
)


def paraphrase(r: random.Random, q: str) -> str:
    """One fresh rewording of an attacker's request around question `q` (rarely the same twice)."""
    parts = [pick(r, slot) for slot in PARAPHRASE_SLOTS]
    if r.random() < 0.3:  # sometimes the ask comes first
        parts = [parts[0], parts[2].strip() + "\n\n" if parts[2] else "", "{q}", parts[3]]
    text = "".join(parts).replace("{q}", q)
    if r.random() < 0.25:
        text = text.lower()
    return text.strip()


def vary(r: random.Random, template: str) -> str:
    """A small, hydra-style variation of a shared template: whitespace, punctuation, one synonym swap."""
    swaps = (
        ("complete", "full"),
        ("detailed", "thorough"),
        ("Solve", "Work out"),
        ("following", "below"),
        ("answer", "response"),
        ("step by step", "step-by-step"),
        ("Explain", "Describe"),
    )
    a, b = pick(r, swaps)
    if r.random() < 0.5 and a in template:
        template = template.replace(a, b, 1)
    if r.random() < 0.3:
        template = template.replace("\n\n", "\n", 1)
    if r.random() < 0.2:
        template = template.rstrip() + " "
    return template
