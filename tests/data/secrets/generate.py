#!/usr/bin/env python3
"""Writes corpus.jsonl: synthetic secrets (never real credentials) in
sentences, and ordinary sentences full of numbers, dates, ids and code words
that hold no secret. Seeded, so the file is reproducible:

    python3 tests/data/secrets/generate.py > tests/data/secrets/corpus.jsonl

Each line: {"text": ..., "kind": KIND or null, "secret": the exact substring
that must not survive redaction (null for an ordinary sentence)}.
"""

import json
import random
import string

R = random.Random(20261130)
B62 = string.ascii_letters + string.digits
URLSAFE = B62 + "-_"
HEX = "0123456789abcdef"


def rnd(n, alphabet=B62):
    return "".join(R.choice(alphabet) for _ in range(n))


def luhn_complete(prefix, length):
    body = prefix + "".join(R.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch)
            if i % 2 == 1:
                d *= 2
                if d > 9:
                    d -= 9
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError


def group(number, sizes, sep):
    out, at = [], 0
    for size in sizes:
        out.append(number[at : at + size])
        at += size
    if at < len(number):
        out.append(number[at:])
    return sep.join(out)


IBAN_BBAN = {  # country: (length, BBAN alphabet pattern: n digits, a letters)
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "FR": "n" * 23,
    "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20,
    "IT": "a" + "n" * 22,
    "CH": "n" * 17,
    "BE": "n" * 12,
    "AT": "n" * 16,
    "PL": "n" * 24,
    "PT": "n" * 21,
    "IE": "aaaa" + "n" * 14,
    "SE": "n" * 20,
    "NO": "n" * 11,
}


def iban(country):
    bban = "".join(R.choice(string.digits) if c == "n" else R.choice(string.ascii_uppercase) for c in IBAN_BBAN[country])
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def spaced_iban(value):
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4))


def jwt():
    header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    payload = "eyJ" + rnd(R.randint(30, 80), URLSAFE)
    return f"{header}.{payload}.{rnd(43, URLSAFE)}"


def pem(kind):
    body = "\n".join(rnd(64, B62 + "+/") for _ in range(R.randint(3, 6)))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n{rnd(20, B62 + '+/')}==\n-----END {kind}PRIVATE KEY-----"


positives = []


def pos(kind, template, secret):
    positives.append({"text": template.format(s=secret), "kind": kind, "secret": secret})


# Card numbers: issuer prefixes and lengths, several layouts.
CARD_TEMPLATES = [
    "My card number is {s}, expiry 08/28.",
    "Please charge {s} for the hotel.",
    "Visa {s} exp 11/27 cvc 123",
    "the company card: {s}",
    "Use card {s} for the subscription renewal",
    "I paid with {s} yesterday.",
    "Card ending... actually the full number is {s}",
    "Billing: {s}, name on card J. Doe",
]
issuers = [
    ("4", 16, [4, 4, 4, 4]),
    ("4", 16, [4, 4, 4, 4]),
    ("51", 16, [4, 4, 4, 4]),
    ("55", 16, [4, 4, 4, 4]),
    ("2221", 16, [4, 4, 4, 4]),
    ("2720", 16, [4, 4, 4, 4]),
    ("34", 15, [4, 6, 5]),
    ("37", 15, [4, 6, 5]),
    ("6011", 16, [4, 4, 4, 4]),
    ("65", 16, [4, 4, 4, 4]),
    ("3530", 16, [4, 4, 4, 4]),
    ("36", 14, [4, 6, 4]),
    ("62", 19, [4, 4, 4, 4, 3]),
    ("4", 19, [4, 4, 4, 4, 3]),
    ("6304", 16, [4, 4, 4, 4]),
]
for i in range(30):
    prefix, length, sizes = issuers[i % len(issuers)]
    number = luhn_complete(prefix, length)
    layout = i % 3
    shown = number if layout == 0 else group(number, sizes, " " if layout == 1 else "-")
    pos("card_number", CARD_TEMPLATES[i % len(CARD_TEMPLATES)], shown)

IBAN_TEMPLATES = [
    "My IBAN is {s}.",
    "Send the rent to {s} (Sparkasse).",
    "Bank details: {s}, BIC COBADEFFXXX",
    "please wire it to IBAN {s} before Friday",
    "Salary account {s}",
]
countries = list(IBAN_BBAN)
for i in range(22):
    value = iban(countries[i % len(countries)])
    shown = spaced_iban(value) if i % 2 == 0 else value
    pos("iban", IBAN_TEMPLATES[i % len(IBAN_TEMPLATES)], shown)

TOKEN_TEMPLATES = [
    "here is my key {s}",
    "export TOKEN={s}",
    "I set it to {s} in the CI settings",
    "the bot uses {s} to post",
    "Remember that my key is {s}",
    "config: {s}",
]


def tokens(kind, make, n):
    for i in range(n):
        pos(kind, TOKEN_TEMPLATES[i % len(TOKEN_TEMPLATES)], make())


tokens("aws_key", lambda: "AKIA" + rnd(16, string.ascii_uppercase + string.digits), 6)
tokens("aws_key", lambda: "ASIA" + rnd(16, string.ascii_uppercase + string.digits), 2)
tokens("github_token", lambda: R.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + rnd(36), 8)
tokens("github_token", lambda: "github_pat_" + rnd(22) + "_" + rnd(59), 3)
tokens("gitlab_token", lambda: "glpat-" + rnd(20, URLSAFE), 6)
tokens("slack_token", lambda: R.choice(["xoxb-", "xoxp-", "xoxa-"]) + "-".join(rnd(n, string.digits) for n in (11, 12)) + "-" + rnd(24), 6)
tokens(
    "slack_token",
    lambda: "https://hooks.slack.com/services/T" + rnd(8, string.ascii_uppercase + string.digits) + "/B" + rnd(8, string.ascii_uppercase + string.digits) + "/" + rnd(24),
    2,
)
tokens("google_api_key", lambda: "AIza" + rnd(35, URLSAFE), 6)
tokens("api_key", lambda: "sk-" + rnd(48), 4)
tokens("api_key", lambda: "sk-proj-" + rnd(40, URLSAFE) + rnd(8), 4)
tokens("api_key", lambda: "sk-ant-api03-" + rnd(60, URLSAFE) + "AA", 3)
tokens("api_key", lambda: "sk_live_" + rnd(24), 3)
tokens("api_key", lambda: "npm_" + rnd(36), 2)
tokens("api_key", lambda: "hf_" + rnd(34), 2)
tokens("api_key", lambda: "SG." + rnd(22, URLSAFE) + "." + rnd(43, URLSAFE), 2)
tokens("jwt", jwt, 8)

LABELLED = [
    "api_key={s}",
    "API key: {s}",
    "my api key is {s}",
    "OPENAI_API_KEY={s}",
    "client_secret: \"{s}\"",
    "the access token is {s}",
    "Secret key = {s}",
    "refresh_token: {s}",
    "AWS_SECRET_ACCESS_KEY={s}",
    "{{\"apiKey\": \"{s}\"}}",
    "auth token -> {s}",
    "session token: {s}",
]
for i, template in enumerate(LABELLED):
    value = rnd(40, B62 + "/+") if "AWS" in template else rnd(R.randint(24, 40))
    pos("api_key", template, value)

BEARER = [
    "curl -H 'Authorization: Bearer {s}' https://api.example.com",
    "Authorization: Bearer {s}",
    "use header Bearer {s} for the staging API",
    "bearer {s}",
]
for i in range(8):
    pos("bearer_token", BEARER[i % len(BEARER)], rnd(R.randint(32, 48), B62 + "._-"))

for i, kind in enumerate(["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED ", "DSA "]):
    block = pem(kind)
    pos("private_key", ["here is the deploy key:\n{s}\nkeep it safe", "{s}", "server key follows {s}"][i % 3], block)
pos("private_key", "my wallet private key: 0x{s}", rnd(64, HEX))
pos("private_key", "PRIVATE_KEY={s}", rnd(64, HEX))

PASSWORDS = [
    ("my password is {s}", "Tr0ub4dor&3"),
    ("password: {s}", "hunter22"),
    ("pwd={s}", "Qx7!mvp2"),
    ("The wifi password is \"{s}\"", "BlueHorse!42"),
    ("login jdoe / password: {s}", "Summer2024!"),
    ("DB_PASSWORD={s}", "s3cr3t-Pa55"),
    ("my email password is {s}", "sunshineday"),
    ("Password for the router: {s}", "admin1234"),
    ("the password for my bank account is {s}", "K8#plmz!Q"),
    ("passwd: {s}", "letmein99"),
    ("passphrase: \"{s}\"", "correct horse battery staple"),
    ("My Netflix password is {s}.", "Popcorn2023"),
    ("Our office door code / passcode is {s}", "774411"),
    ("Set password={s} in the form", "Zq9-xT4-vB2"),
    ("password is {s}", "qwerty123"),
    ("the admin password was {s} until yesterday", "P@ssw0rd"),
    ("my gmail password: {s}", "dogsname1987"),
    ("pw: {s}", "Mango!Tree7"),
    ("Remember: the vault passphrase is '{s}'", "plum river lantern 88"),
    ("MYSQL_ROOT_PASSWORD={s}", "rootpw_xK29"),
    ("password = \"{s}\"", "n0t-so-s3cret"),
    ("my laptop password is {s}", "kittycat"),
    ("the wifi password for the cabin is {s}", "Lakeside2025"),
    ("Password: {s}", "Gr33nApple$"),
]
for template, secret in PASSWORDS:
    pos("password", template, secret)
for template, secret in [
    ("postgres://admin:{s}@db.internal:5432/app", "Xk29fjqLm"),
    ("redis://default:{s}@cache.example.net:6379", "r3d1sPass"),
    ("ftp://backup:{s}@files.example.org/dump", "b4ckup!now"),
    ("my PIN is {s}", "4821"),
    ("pin code: {s}", "739104"),
    ("card PIN = {s}", "0596"),
]:
    pos("password", template, secret)

# Harder cases, kept whether or not they are caught: the numbers must be honest.
dotted = luhn_complete("4", 16)
pos("card_number", "card no. {s}", ".".join(dotted[i : i + 4] for i in range(0, 16, 4)))
pos("iban", "iban {s} (typed in lowercase)", iban("DE").lower())
pos("password", "the password is {s}", "sunshine")
pos("password", "my PIN number is {s}", "4821")
pos("api_key", "https://api.example.com/v1/items?access_token={s}&page=2", rnd(32))
pos("api_key", "Here's the key for the staging server: {s}", rnd(32))
pos("api_key", "stripe restricted key {s}", "rk_live_" + rnd(24))
pos("password", "wifi: CabinGuest / {s}", "pine-cone-42")

negatives = []


def neg(text):
    negatives.append({"text": text, "kind": None, "secret": None})


# Handwritten ordinary sentences, with numbers, dates, places and code words.
for line in open(__file__.replace("generate.py", "ordinary.txt"), encoding="utf-8"):
    line = line.rstrip("\n")
    if line and not line.startswith("#"):
        neg(line)

# Generated: phone numbers, ids, barcodes, timestamps, amounts.
for _ in range(12):
    neg(f"Call me at +1 ({R.randint(200, 999)}) {R.randint(200, 999)}-{R.randint(1000, 9999)} after six")
    neg(f"my number is 0{R.randint(151, 179)} {R.randint(1000000, 99999999)}")
    neg(f"The UK office is on +44 20 {R.randint(7000, 7999)} {R.randint(1000, 9999)}")
for _ in range(15):
    length = R.randint(13, 19)
    neg(f"Reference number {R.choice('123456789')}{rnd(length - 1, string.digits)} for your claim")
for _ in range(10):
    ean = rnd(12, string.digits)
    check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(ean)) % 10) % 10
    neg(f"barcode {ean}{check} on the box of cereal")
for _ in range(8):
    neg(f"The log entry at {R.randint(1600000000000, 1800000000000)} ms shows the retry")
for _ in range(8):
    neg(f"Order #{R.randint(100, 999)}-{R.randint(1000000, 9999999)}-{R.randint(1000000, 9999999)} shipped today")
for _ in range(8):
    neg(f"tracking 1Z{rnd(6, string.ascii_uppercase + string.digits)}{rnd(10, string.digits)} via UPS")
for _ in range(8):
    neg(f"fixed in commit {rnd(40, HEX)} last week")
for _ in range(8):
    neg(f"request id {rnd(8, HEX)}-{rnd(4, HEX)}-4{rnd(3, HEX)}-a{rnd(3, HEX)}-{rnd(12, HEX)} failed")
for _ in range(6):
    neg(f"image digest sha256:{rnd(64, HEX)}")
for _ in range(6):
    neg(f"Transaction {R.randint(1000, 9999)} {R.randint(1000, 9999)} {R.randint(1000, 9999)} was refunded")
for _ in range(6):
    neg(f"The population grew to {R.randint(1, 9)} {R.randint(100, 999)} {R.randint(100, 999)} {R.randint(100, 999)} {R.randint(100, 999)}")

for p in positives + negatives:
    print(json.dumps(p, ensure_ascii=False))
