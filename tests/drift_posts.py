"""A simulated drift: a wave of "recovery / mentor" scam testimonials, unlike the training data.

The base training data knows SMS and e-mail spam (prizes, offers, links). These posts read like
grateful personal stories that end in a private contact (Telegram, WhatsApp, an e-mail) and a
money claim; the base fast model calls most of them safe. `lookalike_safe` writes genuine
thank-you posts in the same voice (a coach, a doctor, a neighbour; no money, no private contact),
so a model that learns "testimonial means spam" pays for it on the time split and on gold.

Generated from slot lists with a seeded RNG: different seeds give different posts, so the
held-out sample of the drift test is never trained on.
"""

from __future__ import annotations

import random

OPENERS = (
    "Honestly never thought I'd post this but", "Not sponsored, just grateful:",
    "Sharing because it changed my year:", "Quick testimony 🙏", "Ok story time.",
    "My aunt told me about this and wow,", "If you're reading this it's a sign.",
    "God is good!!", "Been quiet on here but", "Long post, bear with me.",
    "Small win to share:", "Still can't believe it,",
)  # fmt: skip
HEROES = (
    "Mrs. Evelyn Carter", "Mr. Daniel Brooks", "Coach Amara", "Dr. Helena Voss",
    "Agent Marcus Reed", "Ms. Sophia Lin", "Uncle Ray from the forum",
    "a lady called Grace Whitmore", "Mentor Kenji Sato", "Sir Victor Hale", "Pastor Joy Adeyemi",
    "Miss Clara Bennett",
)  # fmt: skip
SCAM_FEATS = (
    "recovered the {amount} I lost to a fake exchange",
    "turned my {amount} into {other} in {days} days",
    "got my frozen wallet of {amount} unlocked",
    "helped me claim an unclaimed inheritance of {amount}",
    "traced and returned {amount} a romance scammer took from me",
    "grew my small {amount} savings to {other} with her signals",
    "cleared my debts and doubled {amount} by {when}",
    "got back the {amount} my broker refused to withdraw",
)
SCAM_CONTACTS = (
    "she only answers on Telegram {handle}", "reach him on WhatsApp {phone}",
    "send a hi to {handle} on Telegram and mention my name",
    "her assistant replies fast at {email}", "message {handle} before the slots close tonight",
    "text {phone}, spots are limited this week", "write to {email} and say I referred you",
)  # fmt: skip
SCAM_CLOSERS = (
    "Don't thank me, thank her 💐", "Life changing, trust the process.", "You won't regret it.",
    "Blessings to you all ✨", "Do it before it's too late!",
    "No upfront fee, you only pay a small release charge.", "Only serious people please.",
)  # fmt: skip
AMOUNTS = ("$1,200", "$3,500", "£900", "€2,000", "0.8 BTC", "2.3 ETH", "$15k", "$640", "4,000 USDT")
WHEN = ("Friday", "the weekend", "month end")

SAFE_FEATS = (
    "helped me finish my first half marathon", "repaired my grandad's old bike for free",
    "taught my son to read when nobody else could", "fixed our fence and refused to take a penny",
    "coached our under-12s to their first win", "walked me through my thesis defence",
    "got our street's food bank running again", "lent us her van for the move",
    "showed me how to budget without any apps", "found my lost dog two towns over",
)  # fmt: skip
SAFE_CLOSERS = (
    "Grateful for people like that.", "Go hug your neighbours today.",
    "The club meets on Saturdays if you're curious.", "Small kindness, big difference.",
    "Made my week, honestly.", "Thank you, truly. ❤️", "Faith in people restored.",
)  # fmt: skip


def _handle(rng: random.Random) -> str:
    name = rng.choice(("evelyn", "recover", "grace", "kenji", "victor", "amara", "helena"))
    suffix = rng.choice(("_fx", "_assist", "official", "_help", "desk"))
    return f"@{name}{suffix}{rng.randint(1, 99)}"


def _phone(rng: random.Random) -> str:
    prefix = rng.choice(("+44 7", "+1 (415) ", "+234 80", "+971 5"))
    return prefix + "".join(str(rng.randint(0, 9)) for _ in range(7))


def _email(rng: random.Random) -> str:
    local = rng.choice(("support", "claims", "desk", "hello"))
    domain = rng.choice(("chainsafe-recovery", "fundtrace", "gracewealth", "assetreturn"))
    return f"{local}@{domain}{rng.choice(('.net', '.org', '.io'))}"


def scam_wave(count: int, seed: int) -> list[str]:
    """`count` distinct scam testimonials (label: spam)."""
    rng = random.Random(seed)
    posts: dict[str, None] = {}
    while len(posts) < count:
        amount, other = rng.sample(AMOUNTS, 2)
        feat = rng.choice(SCAM_FEATS).format(
            amount=amount, other=other, days=rng.randint(3, 21), when=rng.choice(WHEN)
        )
        contact = rng.choice(SCAM_CONTACTS).format(
            handle=_handle(rng), phone=_phone(rng), email=_email(rng)
        )
        text = (
            f"{rng.choice(OPENERS)} {rng.choice(HEROES)} {feat}. "
            f"{contact[0].upper()}{contact[1:]}. {rng.choice(SCAM_CLOSERS)}"
        )
        posts[text] = None
    return list(posts)


def lookalike_safe(count: int, seed: int) -> list[str]:
    """`count` distinct genuine thank-you posts in the same voice (label: safe)."""
    rng = random.Random(seed)
    posts: dict[str, None] = {}
    while len(posts) < count:
        text = (
            f"{rng.choice(OPENERS)} {rng.choice(HEROES)} {rng.choice(SAFE_FEATS)}. "
            f"{rng.choice(SAFE_CLOSERS)}"
        )
        posts[text] = None
    return list(posts)
