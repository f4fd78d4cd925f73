"""A Containerfile (Dockerfile) read into instructions, with Docker's rules for continuation
lines, comments, exec (JSON) and shell forms, and $VARIABLE substitution."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from nsmagic.errors import SpecError

SUPPORTED = ("FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL",
             "EXPOSE")
# Config-only instructions: also what commit's changes (docker commit --change) take.
CONFIG_ONLY = ("ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL", "EXPOSE")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword (upper case), its arguments' text, its line number."""

    keyword: str
    arguments: str
    line: int

    def __str__(self) -> str:
        return f"{self.keyword} {self.arguments}".strip()

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form RUN, CMD or ENTRYPOINT; None for the shell form."""
        text = self.arguments.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None  # Docker's rule: not valid JSON, so the shell form
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        return value

    def command(self) -> list[str]:
        """RUN, CMD or ENTRYPOINT as an argument vector (the shell form through /bin/sh -c)."""
        form = self.exec_form()
        return form if form is not None else ["/bin/sh", "-c", self.arguments]

    def fail(self, why: str) -> SpecError:
        return SpecError(f"line {self.line}: {self.keyword} {why}")


def parse(text: str, where: str = "the Containerfile") -> list[Instruction]:
    """The instructions of a Containerfile, each checked to be one nsmagic builds."""
    instructions = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue  # comments (also inside continued lines) and blank continuation lines
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        if logical:
            instructions.append(instruction_of(logical, start, where))
    if pending.strip():
        instructions.append(instruction_of(pending.strip(), start, where))
    if not instructions:
        raise SpecError(f"{where} has no instructions: it starts with FROM IMAGE")
    if instructions[0].keyword != "FROM":
        raise SpecError(f"{where} starts with {instructions[0].keyword} on line "
                        f"{instructions[0].line}: the first instruction is FROM IMAGE")
    later = [i for i in instructions[1:] if i.keyword == "FROM"]
    if later:
        raise SpecError(f"{where} has a second FROM on line {later[0].line}: multi-stage "
                        "builds are not supported, build each stage as its own image")
    return instructions


def instruction_of(logical: str, line: int, where: str) -> Instruction:
    """One logical line as an instruction nsmagic builds; SpecError otherwise."""
    keyword, _, arguments = logical.partition(" ")
    keyword = keyword.upper()
    arguments = arguments.strip()
    if keyword not in SUPPORTED:
        hint = " (use COPY, and RUN to unpack an archive)" if keyword == "ADD" else ""
        raise SpecError(f"{where}, line {line}: {keyword} is not an instruction nsmagic builds"
                        f"{hint}; it builds " + ", ".join(SUPPORTED))
    if not arguments:
        raise SpecError(f"{where}, line {line}: {keyword} needs arguments")
    return Instruction(keyword, arguments, line)


# -- words and variables -------------------------------------------------------------------

def words(text: str, env: dict[str, str], split: bool = True) -> list[str]:
    """Docker's shell-like words: '...' literal, "..." with $VARIABLES and \\ escapes, a
    backslash escaping the next character, $NAME / ${NAME} / ${NAME:-word} / ${NAME:+word}
    substituted; split on blanks unless split is False (one word, blanks kept)."""
    found: list[str] = []
    current: list[str] = []
    in_word = False
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace() and split:
            if in_word:
                found.append("".join(current))
                current, in_word = [], False
            index += 1
            continue
        in_word = True
        if char == "\\" and index + 1 < len(text):
            current.append(text[index + 1])
            index += 2
        elif char == "'":
            end = text.find("'", index + 1)
            if end < 0:
                raise SpecError(f"unterminated single quote in {text!r}")
            current.append(text[index + 1:end])
            index = end + 1
        elif char == '"':
            index += 1
            while index < len(text) and text[index] != '"':
                if text[index] == "\\" and index + 1 < len(text) and text[index + 1] in '"\\$':
                    current.append(text[index + 1])
                    index += 2
                elif text[index] == "$":
                    value, index = _variable(text, index, env)
                    current.append(value)
                else:
                    current.append(text[index])
                    index += 1
            if index >= len(text):
                raise SpecError(f"unterminated double quote in {text!r}")
            index += 1
        elif char == "$":
            value, index = _variable(text, index, env)
            current.append(value)
        else:
            current.append(char)
            index += 1
    if in_word:
        found.append("".join(current))
    return found


def _variable(text: str, index: int, env: dict[str, str]) -> tuple[str, int]:
    """The value of the variable at text[index] ('$'), and where the text goes on."""
    rest = text[index + 1:]
    if rest.startswith("{"):
        end = rest.find("}")
        if end < 0:
            raise SpecError(f"unterminated ${{ in {text!r}")
        inside = rest[1:end]
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])(.*))?", inside, re.S)
        if match is None:
            raise SpecError(f"${{{inside}}} in {text!r} is not a variable substitution: "
                            "expected ${NAME}, ${NAME:-default} or ${NAME:+alternative}")
        name, operator, word = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name, "")
        if operator == ":-" and not value:
            value = word
        elif operator == ":+":
            value = word if value else ""
        return value, index + 1 + end + 1
    match = _NAME.match(rest)
    if match is None:
        return "$", index + 1
    return env.get(match.group(0), ""), index + 1 + match.end()


def pairs(instruction: Instruction, env: dict[str, str]) -> list[tuple[str, str]]:
    """ENV's or LABEL's KEY=VALUE pairs (ENV's old form KEY VALUE too)."""
    found = words(instruction.arguments, env)
    if found and "=" not in found[0]:
        if instruction.keyword == "ENV":
            key, _, rest = instruction.arguments.partition(" ")
            return [(key, " ".join(words(rest.strip(), env, split=False)))]
        raise instruction.fail(f"takes KEY=VALUE pairs, not {instruction.arguments!r}")
    result = []
    for word in found:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise instruction.fail(f"takes KEY=VALUE pairs, and {word!r} is not one")
        if instruction.keyword == "ENV" and not _NAME.fullmatch(key):
            raise instruction.fail(f"sets variables, and {key!r} is not a variable name")
        result.append((key, value))
    return result
