"""Hand-written text for the fresh3 split's personas (docs/simulator.md, "Fresh3 held-out split").

Kept apart from text.py, fresh_text.py and fresh2_text.py on purpose: none of this wording existed when
the fresh3 split was defined (2026-12-03), so nothing can have been fitted to it. As there, only what a
client really templates lives here (an app's system prompt and tools, a campaign's taxonomy and answer
schema, a harness's prompt variants, an agency's copy brief) plus the small grammars that turn
people's asks into their own words. Where a real corpus fits, the personas use it (corpora.py:
WildChat requests, MT-Bench, Vicuna, generated reasoning-gym banks, real programs).
"""

from __future__ import annotations

import random
from typing import Any

from distillshield.simulate.fresh_text import typo  # the same human slips, not the same words
from distillshield.simulate.sampling import pick

# -- a vertical Q&A bank written from a topic taxonomy (legal and medical) -----------------------------------
# The operator wants a domain model: every cell of a taxonomy (area x issue x jurisdiction x angle, or
# condition x aspect x patient profile) becomes one question, answered under one fixed answer schema.

LEGAL_ISSUES: dict[str, tuple[str, ...]] = {
    "landlord-tenant": (
        "can a landlord keep the deposit for ordinary wear and tear",
        "may a tenant withhold rent when the landlord ignores a repair request",
        "how much notice must a landlord give to end a periodic tenancy",
        "is a verbal lease for two years enforceable",
        "can a landlord enter the flat without the tenant's consent",
        "when can a tenant sublet without the landlord's permission",
    ),
    "employment": (
        "can an employer dismiss an employee on probation without giving reasons",
        "is an unpaid trial shift lawful",
        "when is a non-compete clause enforceable against a former employee",
        "must an employer pay out accrued holiday on termination",
        "is it lawful to monitor employees' work email",
        "what counts as constructive dismissal",
    ),
    "contract": (
        "is an email exchange enough to form a binding contract",
        "can a party rely on a limitation of liability clause after gross negligence",
        "when does a penalty clause become unenforceable",
        "can a contract be rescinded for a misrepresentation made before signing",
        "does silence amount to acceptance of an offer",
        "when is a force majeure clause triggered by a supplier's insolvency",
    ),
    "consumer": (
        "can a shop refuse a refund for a faulty product after 30 days",
        "is a trader bound by a price displayed by mistake online",
        "how long does a consumer have to cancel an online purchase",
        "are automatic subscription renewals enforceable without a reminder",
        "who is liable when a delivered parcel is stolen from the doorstep",
        "can a gym contract be cancelled after moving house",
    ),
    "data-protection": (
        "must a company answer a subject access request within one month",
        "is consent needed to send marketing emails to existing customers",
        "when must a personal data breach be notified to the regulator",
        "can CCTV footage of a neighbour's garden be retained",
        "is a fitness tracker's heart-rate data special category data",
        "can an employer keep job applicants' CVs for future vacancies",
    ),
    "intellectual-property": (
        "does using a competitor's trade mark as a search keyword infringe it",
        "who owns the copyright in code written by a freelancer",
        "is a photograph of a public building protected by copyright",
        "can a recipe be protected by copyright",
        "what must be shown to prove passing off",
        "is reverse engineering software for interoperability permitted",
    ),
    "family": (
        "how is a family home divided on divorce when only one spouse is on the title",
        "can a parent relocate abroad with a child without the other parent's consent",
        "is a prenuptial agreement binding",
        "how is child maintenance calculated for a self-employed parent",
        "do unmarried cohabitants have rights in the shared home",
        "can grandparents apply for contact with a grandchild",
    ),
    "corporate": (
        "when can a director be personally liable for a company's debts",
        "can a minority shareholder block the sale of the company",
        "what duties does a director owe when the company is nearing insolvency",
        "is a shareholder agreement binding on new shareholders",
        "can a company buy back its own shares out of capital",
        "when is a board resolution passed in writing valid",
    ),
    "criminal": (
        "must a suspect answer police questions after arrest",
        "when can the police search a car without a warrant",
        "is self-defence available when the attacker was retreating",
        "can a conviction be appealed after the deadline has passed",
        "when does a caution appear on a criminal record check",
        "is recording a conversation without consent an offence",
    ),
    "immigration": (
        "can a visitor visa holder do unpaid volunteer work",
        "does a spouse visa continue after separation",
        "how long can a permanent resident stay abroad without losing status",
        "can an employer sponsor a worker already in the country on a student visa",
        "is a criminal conviction a bar to naturalisation",
        "what happens if a visa extension is filed one day late",
    ),
    "tax": (
        "is income from renting out a spare room taxable",
        "can a home office be deducted by an employee",
        "when does a hobby become a taxable trade",
        "are gifts to children subject to tax during the parent's lifetime",
        "how are crypto-asset disposals taxed",
        "can a late filing penalty be appealed for a reasonable excuse",
    ),
    "personal-injury": (
        "how long is the limitation period for a personal injury claim",
        "can a claimant recover damages if they were partly at fault",
        "is an occupier liable for a trespasser's injury",
        "can compensation be claimed for psychiatric injury after witnessing an accident",
        "who is liable for an injury caused by a dog off its lead",
        "does a signed waiver bar a claim for injury at a sports centre",
    ),
}
JURISDICTIONS: tuple[str, ...] = (
    "England and Wales",
    "Scotland",
    "Ireland",
    "California",
    "New York",
    "Texas",
    "Ontario",
    "New South Wales",
    "Germany",
    "France",
    "the Netherlands",
    "Singapore",
    "Victoria",
    "British Columbia",
    "Florida",
    "Illinois",
)
LEGAL_ANGLES: tuple[str, ...] = (
    "Under the law of {j}, {issue}?",
    "In {j}, {issue}? Cite the governing statute or leading case.",
    "Under the law in {j}, {issue}, and what are the exceptions?",
    "In {j}, {issue}? Set out the test the courts apply.",
    "Under the law of {j}, {issue}? Include any time limits that apply.",
    "In {j}, {issue}? What remedies are available?",
    "Under the law of {j}, {issue}? Explain who bears the burden of proof.",
    "In {j}, {issue}? Summarise the leading authority and any recent reform.",
)
MED_CONDITIONS: tuple[str, ...] = (
    "community-acquired pneumonia",
    "type 2 diabetes",
    "essential hypertension",
    "atrial fibrillation",
    "heart failure with reduced ejection fraction",
    "asthma",
    "COPD",
    "major depressive disorder",
    "generalised anxiety disorder",
    "migraine",
    "hypothyroidism",
    "iron-deficiency anaemia",
    "gout",
    "rheumatoid arthritis",
    "osteoarthritis of the knee",
    "osteoporosis",
    "urinary tract infection",
    "cellulitis",
    "deep vein thrombosis",
    "pulmonary embolism",
    "acute kidney injury",
    "chronic kidney disease",
    "gastro-oesophageal reflux disease",
    "Helicobacter pylori infection",
    "irritable bowel syndrome",
    "Crohn's disease",
    "psoriasis",
    "atopic eczema",
    "acne vulgaris",
    "otitis media",
    "streptococcal pharyngitis",
    "Lyme disease",
    "epilepsy",
    "Parkinson's disease",
    "benign prostatic hyperplasia",
    "polycystic ovary syndrome",
    "pre-eclampsia",
    "hyperlipidaemia",
    "alcohol withdrawal",
    "insomnia",
)
MED_ASPECTS: tuple[str, ...] = (
    "What is the first-line treatment for {c} in {p}?",
    "Which red-flag features in {p} with suspected {c} need urgent referral?",
    "What is the differential diagnosis for {p} presenting like {c}?",
    "How should drug doses for {c} be adjusted in {p}?",
    "What are the contraindications to the usual treatment of {c} in {p}?",
    "What monitoring is needed for {p} being treated for {c}?",
    "How would you explain {c} and its treatment to {p}?",
    "What investigations confirm {c} in {p}?",
    "What lifestyle advice is evidence-based for {p} with {c}?",
    "When should {p} with {c} be followed up, and what would prompt a change of treatment?",
)
MED_PROFILES: tuple[str, ...] = (
    "a 72-year-old with stage 3 chronic kidney disease",
    "a pregnant woman in the second trimester",
    "a 6-year-old child",
    "a 45-year-old with no other conditions",
    "a breastfeeding mother",
    "an 85-year-old care-home resident on nine medicines",
    "a 30-year-old with a penicillin allergy",
    "a patient with liver cirrhosis",
    "a 16-year-old athlete",
    "a 60-year-old on warfarin",
    "a 50-year-old with heart failure",
    "a 38-year-old on antiretroviral therapy for HIV",
    "a 25-year-old in the first trimester of pregnancy",
    "a 90-year-old with moderate dementia",
)
VERTICAL_SYSTEM: dict[str, str] = {
    "legal": (
        "You are a senior lawyer writing entries for a legal reference. Answer the question for the stated "
        "jurisdiction using this structure: Short answer; Governing law (statutes and leading cases, cited); "
        "Analysis (step by step, applying the law to the question); Exceptions and practical points. Be "
        "precise and complete."
    ),
    "medical": (
        "You are a consultant physician writing entries for a clinical reference. Answer using this "
        "structure: Summary; Reasoning (step by step, from the patient profile to the recommendation); "
        "Recommendation with doses where relevant; Cautions; Guideline basis. Be precise and complete."
    ),
}
VERTICALS: tuple[str, ...] = tuple(VERTICAL_SYSTEM)


def vertical_bank(vertical: str) -> tuple[tuple[str, str], ...]:
    """Every question of one vertical's taxonomy as (question, taxonomy cell), in taxonomy order."""
    out: list[tuple[str, str]] = []
    if vertical == "legal":
        for area, issues in LEGAL_ISSUES.items():
            for i, issue in enumerate(issues):
                for j in JURISDICTIONS:
                    for a, angle in enumerate(LEGAL_ANGLES):
                        out.append((angle.format(j=j, issue=issue), f"legal/{area}/{i}/{j}/{a}"))
        return tuple(out)
    if vertical == "medical":
        for c in MED_CONDITIONS:
            for a, aspect in enumerate(MED_ASPECTS):
                for p, profile in enumerate(MED_PROFILES):
                    out.append((aspect.format(c=c, p=profile), f"medical/{c}/{a}/{p}"))
        return tuple(out)
    raise ValueError(f"unknown vertical '{vertical}'; choose from {', '.join(VERTICALS)}")


# -- a law firm's lawyers, in their own words -------------------------------------------------------------------

LAW_FIRMS = ("Hartley & Quinn LLP", "Okafor Brandt", "Whitcombe Lowe", "Sterling Marsh Solicitors")
LAW_FIRM_SYSTEM = (
    "You are the research assistant of {firm}'s internal knowledge tool. Lawyers of the firm ask about "
    "live matters. Be concise, say when an answer depends on facts you do not have, and never invent "
    "citations: if unsure, say which source to check. Client information is confidential."
)
LAW_MATTERS = ("Henderson", "Alvarez", "Kowalski", "Brightwater", "Nakamura", "Osei", "Delacroix", "Lindqvist")
LAW_OPENERS = (
    "",
    "",
    "",
    "Quick one: ",
    "Client call in 10 min. ",
    "For the {matter} matter: ",
    "{matter} file - ",
    "Sanity check before I advise: ",
    "Partner asked me this, ",
    "Re {matter}: ",
)
LAW_SITUATIONS = (
    "our client wants to know {issue}. They're in {j}.",
    "{issue}? Client is based in {j}, facts still coming in.",
    "the question is basically {issue} ({j}). Short answer first please, then the risks.",
    "in {j}, {issue}? I remember there was a recent case on this but can't place it.",
    "I need a first view on {issue} - {j} law applies under the contract.",
    "{issue}? We're in {j}. Keep it to a paragraph, I'll read the authorities myself.",
)
LAW_TASKS = (
    "Review this clause for our client (the {party}) and flag anything unusual or one-sided:\n\n{clause}",
    "Summarise this clause in three bullet points for a client email:\n\n{clause}",
    "Suggest a redline of this clause that is fairer to the {party}, and explain each change:\n\n{clause}",
    "Draft a short, plain-English email to the client on this ({j}): {issue}?",
    "Compare {j} and {j2} on this: {issue}? A table is fine.",
    "Checklist of documents to ask the client for - the question is {issue}?",
)
LAW_PARTIES = ("supplier", "customer", "licensor", "licensee", "landlord", "tenant", "employer", "buyer", "seller")
LAW_CLAUSES = (
    "{a} shall indemnify {b} against all losses, liabilities, costs and expenses arising out of or in "
    "connection with this Agreement, howsoever caused, save to the extent caused by {b}'s fraud.",
    "Neither party shall be liable for any indirect or consequential loss. {a}'s total aggregate liability "
    "under this Agreement shall not exceed the fees paid in the {n} months preceding the claim.",
    "This Agreement shall continue for an initial term of {n} months and shall thereafter renew "
    "automatically for successive periods of 12 months unless {a} gives not less than 90 days' written "
    "notice before the end of the then-current term.",
    "For a period of {n} months after termination, {b} shall not, directly or indirectly, solicit or "
    "engage any employee of {a} with whom {b} had material dealings in the last 12 months.",
    "{a} may vary the Charges on 30 days' notice. If {b} does not accept the variation, {b}'s sole remedy "
    "shall be to terminate this Agreement on written notice before the variation takes effect.",
    "All Intellectual Property Rights in the Deliverables shall vest in {a} upon creation. {b} hereby "
    "assigns to {a} by way of present assignment of future rights all such rights.",
    "The Tenant shall keep the Premises in good and substantial repair and condition, including the "
    "structure and exterior, and shall make good any damage within {n} days of written notice.",
    "Any dispute arising out of this Agreement shall be referred to arbitration in {city} under the rules "
    "then in force, by a sole arbitrator appointed by {a}.",
    "{a} may terminate this Agreement immediately on written notice if {b} commits any breach, whether "
    "or not remediable, or undergoes a change of control.",
    "{b} shall pay all invoices within {n} days of receipt. Late payments shall bear interest at 4% per "
    "month, compounded daily, until paid in full.",
)
LAW_CITIES = ("London", "Singapore", "New York", "Paris", "Stockholm", "Geneva", "Dublin")
LAW_FOLLOW_UPS = (
    "What if the client only found out about it six months later?",
    "Does it change anything if the other side is a consumer?",
    "ok and which authority would you start with?",
    "Can you make that shorter for the client email?",
    "What's the counterargument the other side will run?",
    "And if the contract is silent on this?",
    "Put that into a two-line note for the file.",
    "Is there any limitation issue I should flag?",
)


def law_clause(r: random.Random) -> str:
    """A contract clause with the matter's party names and numbers filled in."""
    a, b = r.sample(("the Supplier", "the Customer", "the Company", "the Contractor", "the Licensee"), 2)
    text = pick(r, LAW_CLAUSES).format(a=a, b=b, n=pick(r, (3, 6, 12, 18, 24, 30, 36)), city=pick(r, LAW_CITIES))
    return (text[:1].upper() + text[1:]).replace(". the ", ". The ")


def law_ask(r: random.Random, issue: str) -> str:
    """A lawyer's first message: opener, a matter or task in their own words."""
    matter = pick(r, LAW_MATTERS)
    j, j2 = r.sample(JURISDICTIONS, 2)
    opener = pick(r, LAW_OPENERS).format(matter=matter)
    if r.random() < 0.55:
        body = pick(r, LAW_SITUATIONS).format(issue=issue, j=j)
    else:  # a pasted clause keeps its exact words: the slips are the lawyer's, around it
        body = pick(r, LAW_TASKS).format(issue=issue, j=j, j2=j2, party=pick(r, LAW_PARTIES), clause="\0")
    text = opener + body
    return typo(r, text[:1].upper() + text[1:], 0.15).replace("\0", law_clause(r))


# -- tool-use episodes: shared by an agentic-trajectory farm and an honest support bot --------------------------


def _fn(name: str, description: str, props: dict[str, str], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {k: {"type": v} for k, v in props.items()},
                "required": list(props) if required is None else required,
            },
        },
    }


EPISODE_TOOLS: dict[str, list[dict[str, Any]]] = {
    "retail": [
        _fn("find_user_by_email", "Look up a customer by email address.", {"email": "string"}),
        _fn("get_order_details", "Get an order's status, items and payment.", {"order_id": "string"}),
        _fn(
            "cancel_pending_order", "Cancel an order that has not shipped.", {"order_id": "string", "reason": "string"}
        ),
        _fn(
            "return_delivered_items", "Start a return for delivered items.", {"order_id": "string", "item_ids": "array"}
        ),
        _fn(
            "exchange_items",
            "Exchange delivered items for other variants.",
            {"order_id": "string", "item_ids": "array"},
        ),
        _fn("track_shipment", "Get the carrier's tracking events for an order.", {"order_id": "string"}),
    ],
    "airline": [
        _fn("get_reservation", "Get a reservation by booking code.", {"booking_code": "string"}),
        _fn(
            "search_flights", "Search direct flights.", {"origin": "string", "destination": "string", "date": "string"}
        ),
        _fn("change_flight", "Move a reservation to another flight.", {"booking_code": "string", "flight": "string"}),
        _fn("add_baggage", "Add checked bags to a reservation.", {"booking_code": "string", "bags": "integer"}),
        _fn("cancel_reservation", "Cancel a reservation and refund per fare rules.", {"booking_code": "string"}),
    ],
    "banking": [
        _fn("get_accounts", "List a customer's accounts and balances.", {"customer_id": "string"}),
        _fn("list_transactions", "List recent transactions.", {"account_id": "string", "days": "integer"}),
        _fn("freeze_card", "Freeze a payment card.", {"card_id": "string"}),
        _fn("dispute_transaction", "Open a dispute on a card transaction.", {"transaction_id": "string"}),
        _fn(
            "schedule_transfer",
            "Schedule a transfer.",
            {"from_account": "string", "to_iban": "string", "amount": "number"},
        ),
    ],
    "calendar": [
        _fn("list_events", "List calendar events in a date range.", {"start": "string", "end": "string"}),
        _fn("find_free_slots", "Find free slots for attendees.", {"attendees": "array", "duration_min": "integer"}),
        _fn("create_event", "Create an event.", {"title": "string", "start": "string", "attendees": "array"}),
        _fn("send_email", "Send an email.", {"to": "string", "subject": "string", "body": "string"}),
    ],
}
EPISODE_SYSTEM: dict[str, str] = {
    "retail": "You are a customer service agent for an online store. Authenticate the user by email before "
    "any action. Only cancel pending orders and only return or exchange delivered ones. Confirm every "
    "consequential action with the user, then call the tool. Explain your reasoning before each tool call.",
    "airline": "You are an airline reservations agent. Follow the fare rules: basic economy cannot be "
    "changed; changes within 24 hours of booking are free. Confirm before changing or cancelling. Think "
    "step by step about the policy before each tool call.",
    "banking": "You are a banking assistant. Verify the customer before disclosing anything. Freeze cards "
    "on any report of loss or fraud. Disputes need a transaction id. Reason step by step before acting.",
    "calendar": "You are an executive assistant agent with calendar and email tools. Plan the steps before "
    "acting, check for conflicts, and summarise what you did at the end.",
}
# Task templates per domain: (user instruction with slots, tool sequence the episode runs).
EPISODE_TASKS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "retail": (
        (
            "Hi, I'm {name} ({email}). I want to cancel order {order} because I ordered the wrong {item}.",
            ("find_user_by_email", "get_order_details", "cancel_pending_order"),
        ),
        (
            "My email is {email}. The {item} from order {order} arrived broken, I'd like to return it.",
            ("find_user_by_email", "get_order_details", "return_delivered_items"),
        ),
        (
            "This is {name}, {email}. Can I swap the {item} in order {order} for a bigger size?",
            ("find_user_by_email", "get_order_details", "exchange_items"),
        ),
        ("Where is my order {order}? It's been a week. Email {email}.", ("find_user_by_email", "track_shipment")),
    ),
    "airline": (
        (
            "Booking {code}: please move me to a flight from {city} to {city2} on {date}, morning if possible.",
            ("get_reservation", "search_flights", "change_flight"),
        ),
        ("I need to add {bags} checked bags to reservation {code}.", ("get_reservation", "add_baggage")),
        ("Cancel reservation {code} and tell me what I get refunded.", ("get_reservation", "cancel_reservation")),
    ),
    "banking": (
        (
            "I'm customer {cid}. I lost my card yesterday, freeze it and check for anything I didn't make.",
            ("get_accounts", "freeze_card", "list_transactions"),
        ),
        (
            "Customer {cid} here. There's a charge of {amount} I don't recognise, please dispute it.",
            ("get_accounts", "list_transactions", "dispute_transaction"),
        ),
        ("Customer {cid}: send {amount} to {iban} on Friday.", ("get_accounts", "schedule_transfer")),
    ),
    "calendar": (
        (
            "Find 45 minutes with {name} and {name2} next week and send them an invite about {topic}.",
            ("find_free_slots", "create_event", "send_email"),
        ),
        ("What's on my calendar on {date}? Move anything that clashes with the {topic} review.", ("list_events",)),
    ),
}
EPISODE_NAMES = ("Ana Souza", "Liam Chen", "Priya Nair", "Tom Becker", "Yuki Sato", "Omar Haddad", "Eva Novak")
EPISODE_ITEMS = ("hiking boots", "desk lamp", "wireless earbuds", "backpack", "rain jacket", "coffee grinder")
EPISODE_CITIES = ("LHR", "JFK", "SFO", "CDG", "FRA", "NRT", "SIN", "YYZ", "MAD")
EPISODE_TOPICS = ("Q3 budget", "vendor onboarding", "hiring plan", "product launch", "security audit")


def episode_slots(r: random.Random) -> dict[str, Any]:
    """Slot values for an episode template: fresh names, ids and amounts each time."""
    name, name2 = r.sample(EPISODE_NAMES, 2)
    city, city2 = r.sample(EPISODE_CITIES, 2)
    first = name.split()[0].lower()
    return {
        "name": name,
        "name2": name2,
        "email": f"{first}.{r.randrange(10, 999)}@example.com",
        "order": f"#W{r.randrange(1_000_000, 9_999_999)}",
        "item": pick(r, EPISODE_ITEMS),
        "code": "".join(pick(r, "ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6)),
        "city": city,
        "city2": city2,
        "date": f"2026-{r.randrange(6, 13):02d}-{r.randrange(1, 29):02d}",
        "bags": r.randrange(1, 4),
        "cid": f"C{r.randrange(100000, 999999)}",
        "amount": f"{r.randrange(12, 2400)}.{r.randrange(100):02d} EUR",
        "iban": f"DE{r.randrange(10, 99)}{r.randrange(10**15, 10**16)}",
        "topic": pick(r, EPISODE_TOPICS),
    }


def tool_result(r: random.Random, tool: str, slots: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(arguments, JSON-ish output) of one tool call, as the tool formats it."""
    o, e = slots["order"], slots["email"]
    if tool == "find_user_by_email":
        return {"email": e}, f'{{"user_id": "u_{r.randrange(10**6)}", "name": "{slots["name"]}"}}'
    if tool == "get_order_details":
        status = pick(r, ("pending", "delivered", "processed"))
        return {"order_id": o}, (
            f'{{"order_id": "{o}", "status": "{status}", "items": [{{"item_id": "{r.randrange(10**9)}", '
            f'"name": "{slots["item"]}", "price": {r.randrange(15, 300)}.{r.randrange(100):02d}}}]}}'
        )
    if tool in ("cancel_pending_order", "return_delivered_items", "exchange_items"):
        args: dict[str, Any] = {"order_id": o}
        args.update({"reason": "ordered by mistake"} if tool == "cancel_pending_order" else {"item_ids": ["1"]})
        return args, f'{{"order_id": "{o}", "status": "{tool.split("_")[0]}ed", "refund_days": 5}}'
    if tool == "track_shipment":
        return {
            "order_id": o
        }, f'{{"carrier": "UPS", "events": ["label created", "in transit", "at {slots["city"]} hub"]}}'
    code = slots["code"]
    if tool == "get_reservation":
        fare = pick(r, ("economy", "basic_economy", "business"))
        return {
            "booking_code": code
        }, f'{{"code": "{code}", "fare": "{fare}", "flights": ["{slots["city"]}-{slots["city2"]}"]}}'
    if tool == "search_flights":
        flights = ", ".join(f'"HA{r.randrange(100, 999)} {h:02d}:{m:02d}"' for h, m in ((7, 10), (9, 45), (13, 5)))
        return {"origin": slots["city"], "destination": slots["city2"], "date": slots["date"]}, f"[{flights}]"
    if tool == "change_flight":
        return {"booking_code": code, "flight": f"HA{r.randrange(100, 999)}"}, '{"status": "changed", "fee": 0}'
    if tool == "add_baggage":
        return {"booking_code": code, "bags": slots["bags"]}, f'{{"status": "ok", "charge": {35 * slots["bags"]}}}'
    if tool == "cancel_reservation":
        return {"booking_code": code}, f'{{"status": "cancelled", "refund": {r.randrange(0, 900)}}}'
    cid = slots["cid"]
    if tool == "get_accounts":
        return {"customer_id": cid}, f'[{{"account_id": "A{r.randrange(10**6)}", "balance": {r.randrange(10, 20000)}}}]'
    if tool == "list_transactions":
        rows = ", ".join(f'{{"id": "T{r.randrange(10**7)}", "amount": -{r.randrange(3, 400)}}}' for _ in range(4))
        return {"account_id": f"A{r.randrange(10**6)}", "days": 30}, f"[{rows}]"
    if tool == "freeze_card":
        return {"card_id": f"K{r.randrange(10**6)}"}, '{"status": "frozen"}'
    if tool == "dispute_transaction":
        return {
            "transaction_id": f"T{r.randrange(10**7)}"
        }, f'{{"dispute_id": "D{r.randrange(10**5)}", "status": "open"}}'
    if tool == "schedule_transfer":
        return {
            "from_account": f"A{r.randrange(10**6)}",
            "to_iban": slots["iban"],
            "amount": 100,
        }, '{"status": "scheduled"}'
    if tool == "list_events":
        return {
            "start": slots["date"],
            "end": slots["date"],
        }, f'[{{"title": "{slots["topic"]} review", "start": "10:00"}}]'
    if tool == "find_free_slots":
        return {"attendees": [slots["name"], slots["name2"]], "duration_min": 45}, '["Tue 14:00", "Thu 09:30"]'
    if tool == "create_event":
        return {"title": slots["topic"], "start": "Tue 14:00", "attendees": [slots["name"]]}, '{"event_id": "ev_1"}'
    return {"to": slots["email"], "subject": slots["topic"], "body": "Invite attached."}, '{"status": "sent"}'


# -- a store's support bot: customers' own words ------------------------------------------------------------------

SUPPORT_STORES = ("Northtrail Outfitters", "Brew & Bean Supply", "Kestrel Home", "Lumen Audio")
SUPPORT_BOT_SYSTEM = (
    "You are the virtual assistant of {store}. Help customers with orders, returns, exchanges and "
    "deliveries using the tools. Look the customer up by email first. Be friendly and brief. Hand over to "
    "a human agent if the customer asks for one or is upset."
)
SUPPORT_OPENERS = ("", "", "hi ", "hello, ", "Hi there! ", "hey ", "good morning, ", "ugh. ")
SUPPORT_ASKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("where is my order {order}?? its been ages", ("find_user_by_email", "track_shipment")),
    ("my {item} came broken, I want my money back. order {order}", ("find_user_by_email", "return_delivered_items")),
    (
        "can i cancel {order}, i ordered twice by mistake",
        ("find_user_by_email", "get_order_details", "cancel_pending_order"),
    ),
    ("the {item} is too small, can I get the next size up? order {order}", ("find_user_by_email", "exchange_items")),
    ("has order {order} shipped yet", ("find_user_by_email", "get_order_details")),
    ("I never got my {item}. tracking says delivered. {order}", ("find_user_by_email", "track_shipment")),
)
SUPPORT_EMAIL_LINES = ("my email is {email}", "{email}", "it's {email}", "email: {email}", "use {email}")
SUPPORT_FOLLOW_UPS = (
    "ok thanks",
    "how long will the refund take?",
    "can you send it to a different address?",
    "can I talk to a real person",
    "great, thank you!!",
    "and do I need to print a label?",
)


def support_ask(r: random.Random, template: str, slots: dict[str, Any]) -> str:
    """A customer's first message in their own words, often with their email on the same line."""
    text = pick(r, SUPPORT_OPENERS) + template.format(**slots)
    if r.random() < 0.6:
        text += (", " if r.random() < 0.5 else ". ") + pick(r, SUPPORT_EMAIL_LINES).format(**slots)
    return typo(r, text, 0.4)


# -- a paraphrase-augmenting campaign ---------------------------------------------------------------------------
# Each seed question goes out in several wordings, each from another account: the operator collects
# answers to paraphrases to make a distillation set robust to phrasing.

CONCEPTS: tuple[str, ...] = (
    "opportunity cost",
    "the central limit theorem",
    "Bayes' theorem",
    "entropy in thermodynamics",
    "entropy in information theory",
    "comparative advantage",
    "inflation targeting",
    "the time value of money",
    "natural selection",
    "CRISPR gene editing",
    "the immune system's memory cells",
    "photosynthesis",
    "plate tectonics",
    "the greenhouse effect",
    "quantum entanglement",
    "special relativity's time dilation",
    "the Doppler effect",
    "public-key cryptography",
    "hash tables",
    "dynamic programming",
    "gradient descent",
    "overfitting in machine learning",
    "the CAP theorem",
    "database indexing",
    "garbage collection",
    "recursion",
    "big-O notation",
    "TCP congestion control",
    "DNS resolution",
    "containerisation",
    "the prisoner's dilemma",
    "the tragedy of the commons",
    "moral hazard",
    "price elasticity of demand",
    "compound interest",
    "index funds",
    "the separation of powers",
    "judicial review",
    "the social contract",
    "utilitarianism",
    "Kant's categorical imperative",
    "cognitive dissonance",
    "confirmation bias",
    "the placebo effect",
    "statistical significance",
    "p-hacking",
    "the Monty Hall problem",
    "Simpson's paradox",
    "regression to the mean",
    "the Fermi paradox",
    "black holes",
    "dark matter",
    "the Krebs cycle",
    "antibiotic resistance",
    "herd immunity",
    "circadian rhythms",
    "neuroplasticity",
    "the French Revolution's causes",
    "the fall of the Western Roman Empire",
    "the Industrial Revolution",
    "the Marshall Plan",
    "supply chains",
    "just-in-time manufacturing",
    "the Pythagorean theorem",
    "eigenvalues",
    "the derivative",
    "integrals as areas",
    "prime numbers",
    "modular arithmetic",
    "Gödel's incompleteness theorems",
    "the halting problem",
    "Turing completeness",
    "blockchains",
    "vaccines based on mRNA",
    "the water cycle",
    "ocean acidification",
    "nuclear fission",
    "nuclear fusion",
    "superconductivity",
    "semiconductors",
)
CONCEPT_FRAMES: tuple[str, ...] = (
    "Explain {c}.",
    "What is {c}, and why does it matter?",
    "Can you break down {c} for me?",
    "I keep hearing about {c}. What does it actually mean?",
    "How would you explain {c} to a smart 15-year-old?",
    "Give me a clear explanation of {c} with an example.",
    "{C} - what is it and how does it work?",
    "In plain terms, what is {c}?",
    "Help me understand {c}, including a common misconception about it.",
    "Describe {c} and walk through one concrete example.",
)
PROBLEM_FRAMES: tuple[str, ...] = (
    "{q}",
    "Solve this: {q}",
    "Here's a problem.\n{q}\nWhat's the answer, and how do you get it?",
    "{q}\nShow how you'd work it out.",
    "Word problem: {q}",
    "Can you figure this out? {q}",
    "{last}\n\nContext: {rest}",
    "Question: {last}\nDetails: {rest}",
)


def _split_question(q: str) -> tuple[str, str]:
    """(the problem without its question sentence, the question sentence) of a word problem."""
    body = q.strip()
    end = body.rfind("?")
    if end < 0:
        return "", body
    start = max(body.rfind(". ", 0, end), body.rfind("\n", 0, end)) + 1
    rest = (body[:start] + body[end + 1 :]).strip()
    return " ".join(rest.split()), body[start : end + 1].strip()


def fanout_variants(r: random.Random, item: tuple[str, str], k: int) -> list[str]:
    """`k` different wordings of one seed item: ("concept", name) or ("problem", text)."""
    kind, value = item
    if kind == "concept":
        frames = r.sample(CONCEPT_FRAMES, k)
        return [f.format(c=value, C=value[:1].upper() + value[1:]) for f in frames]
    rest, last = _split_question(value)
    frames = [f for f in PROBLEM_FRAMES if rest or "{last}" not in f]
    return [f.format(q=value, rest=rest, last=last) for f in r.sample(frames, min(k, len(frames)))]


# -- a data-science team's nightly evaluation harness -------------------------------------------------------------
# Prompt-sensitivity evaluation: each item of a fixed benchmark subset in three prompt formats, every night.

NIGHTLY_TEMPLATES: tuple[str, ...] = (
    "{q}",
    "Answer the following question.\n\nQuestion: {q}\nAnswer:",
    "### Instruction\n{q}\n\n### Response format\nThink briefly, then give the final answer after 'ANSWER:'.",
)
NIGHTLY_SYSTEM = "You are being evaluated. Answer as accurately as you can."
NIGHTLY_UA = ("evalsuite-nightly/2.3.0 OpenAI/Python 1.61.0", "evalsuite-nightly/2.3.0 Anthropic/Python 0.45.2")


# -- an app that also runs a question bank through its key --------------------------------------------------------

APP_PRODUCTS = ("Notewise", "StudyNest", "Plannery", "Briefcase AI")
APP_SYSTEM = (
    "You are the assistant built into {product}, a notes and productivity app. Help the user write, "
    "summarise, plan and answer questions about their work. Be concise and use markdown lists when helpful."
)
SIDE_JOB_TEMPLATES: tuple[str, ...] = (
    "Solve the following problem. Give a detailed explanation, then the final answer on the last line.\n\n{q}",
    "Provide a complete, well-reasoned solution to the task below.\n\nTask:\n{q}",
)


# -- a content-marketing agency: product copy from a brief, for varied products -----------------------------------

AGENCY_CLIENTS = ("Fjord & Pine", "UrbanLeaf", "Copperline Kitchens", "Vela Outdoor", "Mirth Cosmetics")
COPY_BRIEFS: tuple[str, ...] = (
    "Write a {length}-word product description for {channel}.\nBrand: {brand}\nProduct: {product}\n"
    "Key features: {features}\nAudience: {audience}\nTone: {tone}\nInclude a headline and three bullet points.",
    "Product copy request ({channel})\n- Brand: {brand}\n- Product name: {product}\n- Selling points: {features}\n"
    "- Target customer: {audience}\n- Voice: {tone}\n- Length: about {length} words\nNo superlatives we can't prove.",
)
COPY_CHANNELS = ("an Amazon listing", "a Shopify product page", "an Instagram caption", "a Google Shopping feed")
COPY_TONES = ("warm and playful", "premium and understated", "practical and direct", "eco-conscious", "bold")
COPY_AUDIENCES = ("busy parents", "weekend hikers", "home baristas", "first-time buyers", "gift shoppers", "students")
COPY_PRODUCTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("insulated water bottle", ("keeps drinks cold 24 h", "leak-proof lid", "dishwasher safe", "recycled steel")),
    ("merino wool beanie", ("itch-free merino", "one size", "machine washable", "made in Portugal")),
    ("cast-iron skillet", ("pre-seasoned", "oven safe to 260 °C", "lifetime warranty", "26 cm")),
    ("vitamin C serum", ("15% vitamin C", "fragrance free", "vegan", "30 ml glass bottle")),
    ("ultralight tent", ("1.2 kg", "two-person", "sets up in 3 minutes", "waterproof to 3000 mm")),
    ("bamboo cutting board", ("knife-friendly", "juice groove", "sustainably harvested", "three sizes")),
    ("noise-cancelling headphones", ("30 h battery", "multipoint Bluetooth", "fold flat", "USB-C fast charge")),
    ("pour-over coffee kit", ("borosilicate glass", "stainless filter", "serves 1-4", "gift box")),
    ("linen duvet cover", ("stonewashed linen", "breathable", "hidden buttons", "OEKO-TEX certified")),
    ("trail running shoes", ("grippy lugs", "rock plate", "8 mm drop", "recycled mesh upper")),
    ("standing desk converter", ("gas-spring lift", "fits two monitors", "no assembly", "holds 15 kg")),
    ("kids' rain boots", ("easy-pull handles", "natural rubber", "reflective trim", "sizes 22-35")),
)
COPY_VARIANTS = ("", "Classic ", "Pro ", "Mini ", "Everyday ", "Limited Edition ", "Signature ")
AGENCY_ASKS = (
    "Give me 10 tagline ideas for {brand}'s autumn campaign.",
    "Rewrite this to sound less salesy:\n\n{text}",
    "What's a good content calendar for a small {brand}-style brand on Instagram? One month.",
    "Turn this into three short LinkedIn posts:\n\n{text}",
    "Can you proofread this and keep the voice?\n\n{text}",
)


def copy_brief(r: random.Random, template: str, brand: str) -> tuple[str, int]:
    """One filled-in product-copy brief and the index of its product (the varied part)."""
    p = r.randrange(len(COPY_PRODUCTS))
    name, feats = COPY_PRODUCTS[p]
    chosen = r.sample(feats, r.randrange(2, len(feats) + 1))
    product = f"{brand} {pick(r, COPY_VARIANTS)}{name}".replace("  ", " ")
    return (
        template.format(
            length=pick(r, (50, 80, 120, 150, 200)),
            channel=pick(r, COPY_CHANNELS),
            brand=brand,
            product=product,
            features=", ".join(chosen),
            audience=pick(r, COPY_AUDIENCES),
            tone=pick(r, COPY_TONES),
        ),
        p,
    )


# -- a synthetic-data (self-instruct) farm ------------------------------------------------------------------------

SI_TOPICS: tuple[str, ...] = (
    "algebra word problems",
    "probability puzzles",
    "Python list manipulation",
    "SQL joins",
    "regular expressions",
    "unit conversion",
    "logical deduction",
    "email writing",
    "summarising news",
    "cooking substitutions",
    "travel planning",
    "personal finance",
    "grammar correction",
    "physics kinematics",
    "chemistry stoichiometry",
    "world history dates",
    "geometry proofs",
    "data cleaning with pandas",
    "writing unit tests",
    "debugging JavaScript",
    "ethical dilemmas",
    "negotiation advice",
    "poetry in a given form",
    "explaining idioms",
)
SI_TASK_TYPES = ("instruction-following", "multi-step reasoning", "open-ended generation", "classification", "coding")
SI_INSTRUCTIONS: tuple[str, ...] = (
    "You are helping build a diverse instruction-tuning dataset. Here are example tasks:\n\n{examples}\n\n"
    "Generate {n} new, diverse {task_type} tasks about {topic}. For each, write the instruction, an optional "
    "input, and a high-quality, detailed response that shows its reasoning. Return a JSON list of objects "
    'with keys "instruction", "input" and "output".',
    "Come up with {n} {task_type} tasks on the topic of {topic}, different from these examples:\n\n{examples}\n\n"
    "For every task give: Instruction, Input (or <noinput>), and an expert Output with step-by-step "
    "reasoning. Number them 1 to {n}.",
    "Write {n} challenging {task_type} questions about {topic} together with complete worked answers. Vary "
    "length, difficulty and phrasing. Style reference:\n\n{examples}\n\nOutput JSON lines: "
    '{{"question": ..., "answer": ...}}.',
)


def si_examples(r: random.Random, seeds: tuple[str, ...], k: int = 3) -> str:
    """k seed tasks (real prompts, trimmed) as numbered in-context examples."""
    picks = [" ".join(pick(r, seeds).split())[:300] for _ in range(k)]
    return "\n".join(f"{i + 1}. {p}" for i, p in enumerate(picks))


# -- a one-subject homework-help app (chemistry): teachers' quizzes and students' questions --------------------

QUIZ_APP_SYSTEM = (
    "You are ChemPal, a chemistry helper for secondary school. For students: explain step by step, check "
    "understanding, and do not just give answers to homework. For teachers: create accurate, "
    "curriculum-aligned material with answer keys."
)
CHEM_TOPICS: tuple[str, ...] = (
    "balancing chemical equations",
    "the mole and molar mass",
    "ionic and covalent bonding",
    "the periodic table trends",
    "acids, bases and pH",
    "rates of reaction",
    "exothermic and endothermic reactions",
    "electrolysis",
    "redox reactions",
    "organic chemistry: alkanes and alkenes",
    "chemical equilibrium",
    "gas laws",
    "atomic structure and isotopes",
    "titration calculations",
    "percentage yield",
    "states of matter",
)
QUIZ_REQUESTS: tuple[str, ...] = (
    "Create {n} multiple-choice questions on {topic} for {grade}. Four options each, answer key at the end "
    "with a one-line explanation.",
    "Make a {n}-question practice worksheet on {topic} ({grade}), mixed difficulty, with worked solutions.",
    "I need {n} exit-ticket questions about {topic} for my {grade} class, with answers.",
)
QUIZ_GRADES = ("year 9", "year 10", "year 11", "grade 9", "grade 10", "AP Chemistry", "GCSE")
CHEM_COMPOUNDS = (
    "H2O",
    "CO2",
    "NaCl",
    "CaCO3",
    "H2SO4",
    "NaOH",
    "C6H12O6",
    "NH3",
    "CH4",
    "MgO",
    "KMnO4",
    "Fe2O3",
    "C2H5OH",
    "HCl",
)
CHEM_EQUATIONS = (
    "Fe + O2 -> Fe2O3",
    "C3H8 + O2 -> CO2 + H2O",
    "Al + HCl -> AlCl3 + H2",
    "N2 + H2 -> NH3",
    "KClO3 -> KCl + O2",
    "Na + H2O -> NaOH + H2",
    "C2H6 + O2 -> CO2 + H2O",
    "Cu + AgNO3 -> Cu(NO3)2 + Ag",
    "CaCO3 + HCl -> CaCl2 + H2O + CO2",
    "Mg + O2 -> MgO",
)
CHEM_WHYS = (
    "ice float on water",
    "salt melt ice on roads",
    "a catalyst speed up a reaction without being used up",
    "noble gases not react",
    "metals conduct electricity",
    "the reactivity of alkali metals increase down the group",
    "adding an acid to a carbonate make it fizz",
    "increasing temperature increase the rate of reaction",
    "diamond have such a high melting point",
    "the pH of pure water depend on temperature",
)
CHEM_PAIRS = (
    ("ionic", "covalent bonds"),
    ("an atom", "an ion"),
    ("oxidation", "reduction"),
    ("a strong acid", "a concentrated acid"),
    ("mass number", "atomic number"),
    ("exothermic", "endothermic"),
    ("an element", "a compound"),
    ("alkanes", "alkenes"),
)
CHEM_QUESTIONS = (
    "how do i balance {eq}",
    "what is the molar mass of {c}",
    "how many moles are in {g} g of {c}",
    "why does {why}",
    "whats the difference between {a} and {b}",
    "balance this: {eq}",
    "is {c} ionic or covalent and why",
    "if i have {g} g of {c} how many molecules is that",
)
CHEM_TAILS = ("", "", "", "?", "??", " pls", " for my homework", " i have a test tomorrow", " step by step", " thx")
CHEM_OPENERS = ("", "", "", "hi ", "hey ", "quick question ", "ok so ", "i dont get this: ")
CHEM_FOLLOW_UPS = (
    "why do you multiply by that",
    "ok so is the answer {g}?",
    "can you give me another one to practice",
    "wait what's avogadro's number again",
    "thanks that makes sense",
    "how do i know which one to balance first",
    "my teacher said something different",
)


def chem_ask(r: random.Random) -> str:
    """A student's chemistry question in their own words, with the slips students make."""
    a, b = pick(r, CHEM_PAIRS)
    q = pick(r, CHEM_QUESTIONS).format(
        eq=pick(r, CHEM_EQUATIONS), c=pick(r, CHEM_COMPOUNDS), g=r.randrange(2, 250), why=pick(r, CHEM_WHYS), a=a, b=b
    )
    return typo(r, pick(r, CHEM_OPENERS) + q + pick(r, CHEM_TAILS), 0.5).strip()
