"""Network identity of simulated clients: IP addresses (residential, cloud, proxy ranges) and user agents.

Addresses are drawn from fixed per-kind /16 blocks so that analysis by prefix (/24, /16) sees the
structure real traffic has: home users spread over ISP ranges, pipelines and resellers in cloud
ranges, proxy networks reusing a few /24s. They are simulation values, not anyone's real hosts.
"""

from __future__ import annotations

import numpy as np

# First two octets of the /16 blocks each kind of address comes from.
RESIDENTIAL_BLOCKS = (
    (24, 16),
    (67, 180),
    (73, 92),
    (76, 21),
    (86, 131),
    (90, 84),
    (98, 207),
    (109, 148),
    (112, 203),
    (118, 36),
    (126, 74),
    (174, 58),
    (185, 72),
    (189, 6),
    (201, 47),
    (213, 94),
)
CLOUD_BLOCKS = ((3, 91), (13, 52), (18, 204), (20, 119), (34, 141), (35, 199), (44, 201), (52, 14), (104, 196))
PROXY_BLOCKS = ((45, 134), (91, 243), (103, 152), (146, 70), (193, 32), (194, 61))

USER_AGENTS: dict[str, tuple[str, ...]] = {
    # Official SDKs, as they announce themselves.
    "openai-python": (
        "OpenAI/Python 1.54.4",
        "OpenAI/Python 1.58.1",
        "OpenAI/Python 1.61.0",
        "OpenAI/Python 1.66.3",
        "AsyncOpenAI/Python 1.59.7",
    ),
    "openai-node": ("OpenAI/JS 4.77.0", "OpenAI/JS 4.85.1", "OpenAI/JS 4.91.0"),
    "anthropic-python": ("Anthropic/Python 0.42.0", "Anthropic/Python 0.45.2", "AsyncAnthropic/Python 0.49.0"),
    "anthropic-node": ("Anthropic/JS 0.36.3", "Anthropic/JS 0.39.0"),
    # Chat front ends and IDE extensions that call the API for a person.
    "chat-app": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/132.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        "Mozilla/5.0 (X11; Linux x86_64; rv:134.0) Gecko/20100101 Firefox/134.0",
        "ChatBox/1.9.1",
        "TypingMind/2025.01",
        "LibreChat/0.7.6",
    ),
    "ide": ("Continue/0.9.251 (vscode)", "Cline/3.2.0", "Cursor/0.45.11", "Zed/0.170.4", "JetBrains-AI/243.22562"),
    # Scripts and services.
    "script": ("python-requests/2.32.3", "python-httpx/0.28.1", "aiohttp/3.11.11", "curl/8.5.0", "Go-http-client/2.0"),
    "agent": (
        "langchain-openai/0.3.1 OpenAI/Python 1.59.7",
        "openai-agents/0.0.7 OpenAI/Python 1.66.3",
        "llama-index/0.12.14 OpenAI/Python 1.58.1",
        "autogen/0.4.3 OpenAI/Python 1.61.0",
    ),
    "eval": ("lm-eval/0.4.7 OpenAI/Python 1.58.1", "inspect_ai/0.3.58 OpenAI/Python 1.59.7", "OpenAI/Python 1.54.4"),
}


def _addr(rng: np.random.Generator, block: tuple[int, int], third: int | None = None) -> str:
    c = int(rng.integers(0, 256)) if third is None else third
    return f"{block[0]}.{block[1]}.{c}.{int(rng.integers(2, 254))}"


def residential_ip(rng: np.random.Generator) -> str:
    return _addr(rng, RESIDENTIAL_BLOCKS[int(rng.integers(len(RESIDENTIAL_BLOCKS)))])


def cloud_ip(rng: np.random.Generator) -> str:
    return _addr(rng, CLOUD_BLOCKS[int(rng.integers(len(CLOUD_BLOCKS)))])


def proxy_pool(rng: np.random.Generator, size: int, subnets: int) -> list[str]:
    """`size` addresses packed into `subnets` /24 ranges of proxy space: what a proxy network rents."""
    nets = []
    for _ in range(max(1, subnets)):
        block = PROXY_BLOCKS[int(rng.integers(len(PROXY_BLOCKS)))]
        nets.append((block, int(rng.integers(0, 256))))
    pool = {
        _addr(rng, nets[i % len(nets)][0], nets[i % len(nets)][1]) for i in range(size * 2)
    }  # duplicates collapse; sorted below so the order never depends on hashing
    return sorted(pool)[:size]


def user_agent(rng: np.random.Generator, family: str) -> str:
    options = USER_AGENTS[family]
    return options[int(rng.integers(len(options)))]


def sdk_family(api: str, rng: np.random.Generator, node_share: float = 0.25) -> str:
    """The SDK family that sends an account's requests, given the API it speaks."""
    node = rng.random() < node_share
    if api == "anthropic":
        return "anthropic-node" if node else "anthropic-python"
    return "openai-node" if node else "openai-python"
