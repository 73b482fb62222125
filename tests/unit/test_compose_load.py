"""ovctl/stack/load.py: compose files read, interpolated and merged, with file:line for every key
path; every problem a ComposeError whose message names the file, line and key path."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from ovctl.stack.load import ComposeError, Loaded, dotted, interpolate, load


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_text(tmp: Path, text: str, environ: Mapping[str, str] | None = None) -> Loaded:
    return load([write(tmp, "stack.yml", text)], environ or {})


def error_of(tmp: Path, text: str, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ComposeError) as e:
        load_text(tmp, text, environ)
    return str(e.value)


# ---------------------------------------------------------------- one file


PLAIN = """
version: "3.8"
services:
  web:
    image: nginx:1.27
    replicas_hint: 3
    ratio: 0.5
    debug: false
    nothing:
    ports:
      - "8080:80"
      - target: 443
        published: 8443
    command: [serve, --port, "80"]
networks:
  front:
    attachable: true
"""


def test_plain_file_loads_to_plain_values(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, PLAIN)
    assert loaded.data == {
        "services": {
            "web": {
                "image": "nginx:1.27",
                "replicas_hint": 3,
                "ratio": 0.5,
                "debug": False,
                "nothing": None,
                "ports": ["8080:80", {"target": 443, "published": 8443}],
                "command": ["serve", "--port", "80"],
            }
        },
        "networks": {"front": {"attachable": True}},
    }
    assert loaded.files == (tmp_path / "stack.yml",)


def test_where_gives_the_line_of_keys_and_list_items(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, PLAIN)
    f = tmp_path / "stack.yml"
    assert loaded.where("services") == f"{f}:2"
    assert loaded.where("services", "web", "image") == f"{f}:4"
    assert loaded.where("services", "web", "ports") == f"{f}:9"
    assert loaded.where("services", "web", "ports", 0) == f"{f}:10"
    assert loaded.where("services", "web", "ports", 1) == f"{f}:11"
    assert loaded.where("services", "web", "ports", 1, "published") == f"{f}:12"
    assert loaded.where("networks", "front", "attachable") == f"{f}:16"
    # unknown node -> nearest known ancestor; nothing known -> the file
    assert loaded.where("services", "web", "ports", 1, "mode") == f"{f}:11"
    assert loaded.where("services", "db") == f"{f}:2"
    assert loaded.where("secrets") == str(f)
    assert loaded.where() == str(f)


def test_error_message_names_place_and_key_path(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, PLAIN)
    f = tmp_path / "stack.yml"
    err = loaded.error("bad port", "services", "web", "ports", 0)
    assert isinstance(err, ComposeError)
    assert str(err) == f"{f}:10: services.web.ports[0]: bad port"
    assert str(loaded.error("no services")) == f"{f}: no services"
    assert dotted(("services", "web", "ports", 0, "target")) == "services.web.ports[0].target"


def test_version_is_dropped(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, PLAIN)
    assert "version" not in loaded.data
    assert loaded.where("version") == str(tmp_path / "stack.yml")


def test_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").data == {}
    assert load_text(tmp_path, "# only a comment\n").data == {}


def test_anchors_aliases_and_merge_keys(tmp_path: Path) -> None:
    loaded = load_text(
        tmp_path,
        """
        x-common: &common
          image: busybox
          environment: &env
            A: "1"
          labels: {tier: base}
        x-more: &more
          labels: {tier: more}
          user: nobody
        services:
          a:
            <<: [*common, *more]
            labels: {tier: own}
          b:
            <<: *common
            environment: *env
        """,
    )
    f = tmp_path / "stack.yml"
    services = loaded.data["services"]
    assert services["a"] == {
        "image": "busybox",
        "environment": {"A": "1"},
        "labels": {"tier": "own"},  # own keys win over merged ones
        "user": "nobody",
    }
    assert services["b"] == {
        "image": "busybox",
        "environment": {"A": "1"},
        "labels": {"tier": "base"},
    }
    # a merged-in key is located where the anchored mapping wrote it
    assert loaded.where("services", "a", "image") == f"{f}:2"
    assert loaded.where("services", "a", "user") == f"{f}:8"
    assert loaded.where("services", "a", "labels") == f"{f}:12"


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "services: &s\n  web: *s\n")
    assert "services.web: an alias refers to a node that contains it" in msg


# ---------------------------------------------------------------- interpolation


ENV = {"SET": "value", "EMPTY": "", "OTHER": "other"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$SET", "value"),
        ("${SET}", "value"),
        ("pre-${SET}-post/$SET.x", "pre-value-post/value.x"),
        ("$UNSET", ""),
        ("${UNSET}", ""),
        ("${SET:-d}", "value"),
        ("${EMPTY:-d}", "d"),
        ("${UNSET:-d}", "d"),
        ("${SET-d}", "value"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${SET:+r}", "r"),
        ("${EMPTY:+r}", ""),
        ("${UNSET:+r}", ""),
        ("${SET+r}", "r"),
        ("${EMPTY+r}", "r"),
        ("${UNSET+r}", ""),
        ("${SET:?m}", "value"),
        ("${EMPTY?m}", ""),
        ("$$SET costs $$5", "$SET costs $5"),
        ("${UNSET:-$$}", "$"),
        ("${UNSET:-${OTHER}}", "other"),
        ("${UNSET:-a-${MISSING:-${OTHER}}-b}", "a-other-b"),
        ("${UNSET:-x}}", "x}"),
        ("${SET:-${UNSET:?never evaluated}}", "value"),
        ("no dollars {here}", "no dollars {here}"),
    ],
)
def test_interpolation_forms(template: str, expected: str) -> None:
    assert interpolate(template, ENV) == expected


def test_interpolation_applies_to_values_not_keys(tmp_path: Path) -> None:
    loaded = load_text(
        tmp_path,
        """
        services:
          web:
            image: "${REG}/web:${TAG:-latest}"
            command: [echo, $SET, "$$HOME"]
            environment:
              $KEY: ${SET}
            replicas: ${N}
        """,
        {"REG": "r.example", "SET": "x", "KEY": "k", "N": "3"},
    )
    web = loaded.data["services"]["web"]
    assert web["image"] == "r.example/web:latest"
    assert web["command"] == ["echo", "x", "$HOME"]
    assert web["environment"] == {"$KEY": "x"}
    assert web["replicas"] == "3"  # interpolated values stay strings


def test_required_variable_message(tmp_path: Path) -> None:
    text = """
    services:
      db:
        environment:
          PASS: ${X:?need X}
          OTHER: ${Y?}
    """
    f = tmp_path / "stack.yml"
    msg = error_of(tmp_path, text)
    assert (
        msg
        == f"{f}:4: services.db.environment.PASS: required variable X is missing a value: need X"
    )
    msg = error_of(tmp_path, text, {"X": "set"})
    assert msg == f"{f}:5: services.db.environment.OTHER: required variable Y is missing a value"
    assert load_text(tmp_path, text, {"X": "1", "Y": ""}).data["services"]["db"]["environment"] == {
        "PASS": "1",
        "OTHER": "",
    }


@pytest.mark.parametrize(
    "bad",
    ["${", "${VAR", "${1abc}", "${VAR:-x", "${VAR!x}", "${}", "cost: 5$", "$-x", "a ${B:-${C}"],
)
def test_malformed_interpolation(tmp_path: Path, bad: str) -> None:
    msg = error_of(tmp_path, f"services:\n  web:\n    image: {bad!r}\n")
    f = tmp_path / "stack.yml"
    assert msg.startswith(f"{f}:3: services.web.image: invalid interpolation format in "), msg


def test_dotenv_beside_first_file_and_environment_precedence(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# a comment\n\nTAG=1.0\nexport REG=dotenv.example\nQ1='single # kept'\n"
        'Q2="double"  # comment\nPLAIN=a b # comment\nEQ=a=b\n'
    )
    loaded = load_text(
        tmp_path,
        """
        services:
          web:
            image: $REG/web:$TAG
            labels: [q1=$Q1, q2=$Q2, plain=$PLAIN, eq=$EQ]
        """,
        {"REG": "env.example"},
    )
    web = loaded.data["services"]["web"]
    assert web["image"] == "env.example/web:1.0"
    assert web["labels"] == ["q1=single # kept", "q2=double", "plain=a b", "eq=a=b"]


def test_dotenv_is_read_beside_the_first_file_only(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".env").write_text("TAG=other\n")
    (tmp_path / ".env").write_text("TAG=first\n")
    a = write(tmp_path, "a.yml", "services: {web: {image: 'x:$TAG'}}\n")
    b = write(tmp_path / "other", "b.yml", "services: {db: {image: 'y:$TAG'}}\n")
    data = load([a, b], {}).data
    assert data["services"] == {"web": {"image": "x:first"}, "db": {"image": "y:first"}}


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("NOT A LINE", "expected KEY=VALUE"),
        ("1X=2", "expected KEY=VALUE"),
        ("Q='open", "badly quoted"),
    ],
)
def test_bad_dotenv_line(tmp_path: Path, line: str, what: str) -> None:
    (tmp_path / ".env").write_text(f"OK=1\n# c\n{line}\n")
    msg = error_of(tmp_path, "services: {}\n")
    assert msg.startswith(f"{tmp_path / '.env'}:3: "), msg
    assert what in msg


# ---------------------------------------------------------------- YAML and file problems


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "services:\n  web:\n    image: [nginx\n    ports: x\n")
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'stack.yml'))}:4:10: YAML syntax error: .+", msg
    ), msg
    msg = error_of(tmp_path, "services:\n  web: {image: x\n")
    assert msg.startswith(f"{tmp_path / 'stack.yml'}:3:1: YAML syntax error: "), msg


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "services:\n  web:\n    image: a\n    command: x\n    image: b\n")
    assert msg == f"{tmp_path / 'stack.yml'}:5: services.web.image: duplicate key (first at line 3)"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"nope\.yml: no such file"):
        load([tmp_path / "nope.yml"], {})


def test_directory_is_not_readable_as_a_file(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=rf"^{re.escape(str(tmp_path))}: cannot read it"):
        load([tmp_path], {})


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a single value")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    msg = error_of(tmp_path, text)
    assert msg == (
        f"{tmp_path / 'stack.yml'}:1: the top level must be a mapping "
        f"(services:, networks:, ...), not {kind}"
    )


def test_unsupported_tag(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "services:\n  web:\n    image: !custom x\n")
    assert msg == f"{tmp_path / 'stack.yml'}:3: services.web.image: unsupported YAML tag !custom"


# ---------------------------------------------------------------- several files


A_YML = """
services:
  web:
    image: web:1
    command: [serve, --debug]
    environment: [A=1, B=2, C]
    labels: {one: "1"}
    ports:
      - "80:80"
      - "443:443"
    networks: [front]
    deploy:
      labels: [x=1]
      placement:
        constraints: [node.role==worker]
"""

B_YML = """
version: "3"
services:
  web:
    image: web:2
    command: [serve]
    environment:
      B: "20"
      D: "4"
    labels: [two=2]
    ports:
      - "443:443"
      - "8080:8080"
    networks:
      back:
        aliases: [api]
    deploy:
      labels: {y: "2"}
      placement:
        constraints: [node.role==manager]
  db:
    image: postgres
"""


def test_merge_of_two_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yml", A_YML)
    b = write(tmp_path, "b.yml", B_YML)
    loaded = load([a, b], {})
    assert loaded.files == (a, b)
    assert loaded.data == {
        "services": {
            "web": {
                "image": "web:2",
                "command": ["serve"],
                "environment": {"A": "1", "B": "20", "C": None, "D": "4"},
                "labels": {"one": "1", "two": "2"},
                "ports": ["80:80", "443:443", "8080:8080"],
                "networks": {"front": None, "back": {"aliases": ["api"]}},
                "deploy": {
                    "labels": {"x": "1", "y": "2"},
                    "placement": {"constraints": ["node.role==manager"]},
                },
            },
            "db": {"image": "postgres"},
        }
    }


def test_merge_keeps_each_value_where_its_file_put_it(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yml", A_YML)
    b = write(tmp_path, "b.yml", B_YML)
    loaded = load([a, b], {})
    assert loaded.where("services", "web", "image") == f"{b}:4"
    assert loaded.where("services", "web", "command", 0) == f"{b}:5"
    assert loaded.where("services", "web", "environment", "A") == f"{a}:5"
    assert loaded.where("services", "web", "environment", "B") == f"{b}:7"
    assert loaded.where("services", "web", "environment", "C") == f"{a}:5"
    assert loaded.where("services", "web", "ports", 0) == f"{a}:8"
    assert loaded.where("services", "web", "ports", 1) == f"{a}:9"
    assert loaded.where("services", "web", "ports", 2) == f"{b}:12"
    assert loaded.where("services", "web", "networks", "front") == f"{a}:10"
    assert loaded.where("services", "web", "networks", "back", "aliases", 0) == f"{b}:15"
    assert loaded.where("services", "web", "deploy", "placement", "constraints", 0) == f"{b}:19"
    assert loaded.where("services", "db", "image") == f"{b}:21"
    assert "version" not in loaded.data


def test_single_file_keeps_its_list_forms(tmp_path: Path) -> None:
    web = load([write(tmp_path, "a.yml", A_YML)], {}).data["services"]["web"]
    assert web["environment"] == ["A=1", "B=2", "C"]
    assert web["networks"] == ["front"]


def test_empty_value_does_not_erase_and_scalars_replace_scalars(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yml", "services:\n  web:\n    ports: ['80']\n    replicas: 2\n")
    b = write(tmp_path, "b.yml", "services:\n  web:\n    ports:\n    replicas: two\n")
    web = load([a, b], {}).data["services"]["web"]
    assert web == {"ports": ["80"], "replicas": "two"}


def test_interpolation_is_per_file_before_merging(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yml", "services:\n  web:\n    image: $IMG\n")
    b = write(tmp_path, "b.yml", "services:\n  web:\n    image: ${IMG}-b\n    ports: ['$$P']\n")
    web = load([a, b], {"IMG": "i"}).data["services"]["web"]
    assert web == {"image": "i-b", "ports": ["$P"]}


def test_type_conflict_names_both_files_and_lines(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yml", "services:\n  web:\n    image: x\n    ports:\n      - '80'\n")
    b = write(tmp_path, "b.yml", "# b\n\nservices:\n  web:\n\n\n    ports: '80:80'\n")
    with pytest.raises(ComposeError) as e:
        load([a, b], {})
    assert str(e.value) == f"{b}:7: services.web.ports: is a string here but a list in {a}:4"


def test_conflict_between_a_mapping_and_a_scalar(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yml", "services:\n  web:\n    deploy: {replicas: 1}\n")
    b = write(tmp_path, "b.yml", "services:\n  web:\n    deploy: 3\n")
    with pytest.raises(ComposeError) as e:
        load([a, b], {})
    assert str(e.value) == f"{b}:3: services.web.deploy: is a number here but a mapping in {a}:3"


def test_three_files_merge_in_order(tmp_path: Path) -> None:
    files = [
        write(tmp_path, f"{n}.yml", f"services:\n  web:\n    image: v{n}\n    dns: [d{n}, d0]\n")
        for n in (1, 2, 3)
    ]
    loaded = load(files, {})
    assert loaded.data["services"]["web"] == {"image": "v3", "dns": ["d1", "d0", "d2", "d3"]}
    assert loaded.where("services", "web", "dns", 3) == f"{files[2]}:4"
    assert loaded.where("services", "web", "image") == f"{files[2]}:3"


def test_no_files() -> None:
    with pytest.raises(ComposeError, match="no compose file"):
        load([], {})
