"""The engine: each default rule, the combination of rules and every kind of condition."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

from relayguard.config import ScanSettings
from relayguard.decision import Action, Envelope, Finding, Rewrite, Submitter, SubmitterKind
from relayguard.policy import LoadedPolicy, decide
from relayguard.policy.engine import distinct_count

from .conftest import SENDER, FixedDetector, eml, nhs, policy_from, run


def to_list(n: int, domain: str, header: str = "To") -> str:
    return f"{header}: " + ", ".join(f"p{i}@{domain}" for i in range(n))


def test_eleven_external_visible_recipients_are_rewritten_to_bcc(default_policy: LoadedPolicy) -> None:
    """More than 10 external addresses in To/Cc gives rewrite bcc; exactly 10 does not."""
    assert run(default_policy, eml(to_list(11, "council.gov.uk"))).rewrite is Rewrite.BCC
    assert run(default_policy, eml(to_list(10, "council.gov.uk"))).rewrite is None


def test_internal_recipients_do_not_count_as_external(default_policy: LoadedPolicy) -> None:
    """Thirty colleagues at the sender's own domain are not a mass external mailing."""
    d = run(default_policy, eml(to_list(30, "oakfield-surgery.nhs.uk")))
    assert (d.action, d.rewrite, d.rules) == (Action.DELIVER, None, ())


def test_two_public_mailboxes_visible_are_rewritten(default_policy: LoadedPolicy) -> None:
    """Two freemail addresses in To/Cc (any case) are hidden from each other; one is not."""
    d = run(default_policy, eml("To: a@GMAIL.com", "Cc: b@hotmail.co.uk"))
    assert d.rewrite is Rewrite.BCC
    assert d.rules == ("public-mailboxes-visible",)
    assert run(default_policy, eml("To: a@gmail.com")).rewrite is None


def test_bcc_only_recipients_are_not_visible(default_policy: LoadedPolicy) -> None:
    """300 freemail recipients only in the envelope need no rewrite: nobody can see them."""
    rcpts = [f"p{i}@gmail.com" for i in range(300)]
    d = run(default_policy, eml(f"To: {SENDER}"), [SENDER, *rcpts])
    assert (d.action, d.rewrite) == (Action.DELIVER, None)


def test_identifier_to_bcc_freemail_recipient_is_held(default_policy: LoadedPolicy) -> None:
    """An NHS number held for a recipient outside internal/secure, even one only in BCC."""
    d = run(default_policy, eml("To: ward@nhs.net"), ["ward@nhs.net", "x@gmail.com"], findings=[nhs()])
    assert d.action is Action.HOLD
    assert d.rules == ("patient-identifier-outside-secure",)


def test_one_identifier_to_secure_domain_is_delivered(default_policy: LoadedPolicy) -> None:
    """A referral with one NHS number to nhs.net goes through."""
    d = run(default_policy, eml("To: ward@nhs.net"), ["ward@nhs.net"], findings=[nhs()])
    assert d.action is Action.DELIVER


def test_unconfident_identifier_is_not_held(default_policy: LoadedPolicy) -> None:
    """A number that is not a confident identifier does not trigger the identifier rule."""
    d = run(default_policy, eml("To: x@gmail.com"), ["x@gmail.com"], findings=[nhs(confident=False)])
    assert d.action is Action.DELIVER


def test_ten_distinct_identifiers_to_secure_domain_are_held(default_policy: LoadedPolicy) -> None:
    """Ten distinct identifiers across two places held even for nhs.net; nine are not."""
    ten = [nhs(5, where="body"), nhs(5, where="attachment:a.csv", start=5)]
    d = run(default_policy, eml("To: ward@nhs.net"), ["ward@nhs.net"], findings=ten)
    assert d.action is Action.HOLD
    assert d.rules == ("bulk-patient-identifiers",)
    repeated = [nhs(5, where="body"), nhs(5, where="attachment:a.csv", start=1)]  # 6 distinct
    d = run(default_policy, eml("To: ward@nhs.net"), ["ward@nhs.net"], findings=repeated)
    assert d.action is Action.DELIVER


def test_bulk_identifiers_to_internal_only_are_delivered(default_policy: LoadedPolicy) -> None:
    """A list of patients sent to colleagues inside the practice is not held."""
    d = run(default_policy, eml(f"To: {SENDER}"), [SENDER], findings=[nhs(40)])
    assert d.action is Action.DELIVER


def test_unscannable_outside_secure_is_held(default_policy: LoadedPolicy) -> None:
    """An encrypted attachment to freemail is held; the same to nhs.net is not."""
    enc = Finding(kind="unscannable", where="attachment:a.zip", confident=False, reason="encrypted")
    d = run(default_policy, eml("To: x@btinternet.com"), ["x@btinternet.com"], findings=[enc])
    assert d.action is Action.HOLD
    assert run(default_policy, eml("To: w@nhs.net"), ["w@nhs.net"], findings=[enc]).action is Action.DELIVER


def test_malformed_address_header_is_held(default_policy: LoadedPolicy) -> None:
    """An address header that cannot be read holds the message (fail safe)."""
    d = run(default_policy, eml("To: colleague@oakfield-surgery.nhs.uk", "Cc: <<broken"),
            ["colleague@oakfield-surgery.nhs.uk"])
    assert d.action is Action.HOLD
    assert "unreadable-address-headers" in d.rules
    assert [f.kind for f in d.findings] == ["address_defect"]


def test_detector_crash_is_unscannable_and_held(default_policy: LoadedPolicy) -> None:
    """A detector that raises makes the message unscannable, which holds it for outside recipients."""
    def broken(msg: object, **kwargs: object) -> list[Finding]:
        raise ValueError("boom")
    d = decide(eml("To: x@gmail.com"), Envelope(SENDER, ("x@gmail.com",)),
               Submitter(SENDER, SubmitterKind.NETWORK), default_policy, limits=ScanSettings(),
               detector=broken)
    assert d.action is Action.HOLD
    assert d.findings[0].kind == "unscannable"


def test_sender_domain_is_internal_unless_it_is_a_shared_provider(default_policy: LoadedPolicy) -> None:
    """A sender at gmail.com does not make every gmail.com recipient internal."""
    d = run(default_policy, eml(to_list(11, "gmail.com")), mail_from="someone@gmail.com")
    assert d.rewrite is Rewrite.BCC


def test_authenticated_users_domain_is_internal() -> None:
    """With an empty envelope sender, the authenticated user's domain is still internal."""
    pol = policy_from("rules:\n  - name: ext\n    when: {recipients: {outside: [internal]}}\n"
                      "    then: {action: hold}\n")
    user = Submitter("gp@oakfield-surgery.nhs.uk", SubmitterKind.USER)
    d = run(pol, eml(f"To: {SENDER}"), [SENDER], mail_from="", submitter=user)
    assert d.action is Action.DELIVER


COMBINED = """
groups:
  doctors: [dr.wood@oakfield-surgery.nhs.uk]
rules:
  - name: tag
    when: {visible_recipients: {in: [secure]}}
    then: {tag_subject: "[secure]", notify: [pm@oakfield-surgery.nhs.uk]}
  - name: bcc
    when: {visible_recipients: {outside: [internal], min: 2}}
    then: {rewrite: bcc}
  - name: one-by-one
    when: {submitter: {groups: [doctors]}}
    then: {rewrite: individual, approvals: 2, approver_role: admin}
  - name: reject-big-zip
    when: {attachment: {names: ["*.ZIP"]}, size: {min: 100}}
    then: {action: reject, reply: "zip files are not allowed"}
  - name: hold-urgent
    when: {headers: [{name: Subject, regex: "(?i)urgent"}], source_network: ["10.0.0.0/8"]}
    then: {action: hold, tag_subject: "[secure]"}
"""


def test_rules_combine_strictest_action_and_accumulate_effects() -> None:
    """Reject beats hold, individual beats bcc, tags dedupe, approvals take the max, rules keep order."""
    pol = policy_from(COMBINED)
    raw = eml("To: a@nhs.net, b@nhs.net", "Subject: =?utf-8?q?URGENT_referral?=", "MIME-Version: 1.0",
              'Content-Type: multipart/mixed; boundary="b"',
              body='--b\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; '
                   'filename="Notes.zip"\r\n\r\nPK\r\n--b--\r\n')
    who = Submitter("Dr.Wood@oakfield-surgery.nhs.uk", SubmitterKind.USER, "10.1.2.3")
    d = run(pol, raw, ["a@nhs.net", "b@nhs.net"], submitter=who)
    assert d.rules == ("tag", "bcc", "one-by-one", "reject-big-zip", "hold-urgent")
    assert (d.action, d.rewrite, d.reply) == (Action.REJECT, Rewrite.INDIVIDUAL, "zip files are not allowed")
    assert (d.tag_subject, d.notify) == (("[secure]",), ("pm@oakfield-surgery.nhs.uk",))
    assert (d.approvals_required, d.approver_role) == (2, "admin")
    assert d.policy_version == pol.version


def test_conditions_that_do_not_hold_leave_the_message_alone() -> None:
    """Another submitter, network, size and subject match none of the conditional rules."""
    pol = policy_from(COMBINED)
    who = Submitter("nurse@oakfield-surgery.nhs.uk", SubmitterKind.USER, "192.168.1.5")
    d = run(pol, eml("To: a@council.gov.uk", "Subject: urgent"), ["a@council.gov.uk"], submitter=who)
    assert (d.action, d.rewrite, d.rules) == (Action.DELIVER, None, ())


def test_finding_where_glob_and_custom_kinds() -> None:
    """A findings condition can be limited to attachments and to a custom term list."""
    pol = policy_from("terms:\n  oncology: [chemotherapy]\nrules:\n  - name: onc\n"
                      "    when: {findings: {kinds: ['term:oncology'], where: 'attachment:*'}}\n"
                      "    then: {action: hold}\n")
    body = Finding(kind="term:oncology", where="body")
    att = Finding(kind="term:oncology", where="attachment:letter.docx")
    assert run(pol, eml("To: a@b.org"), findings=[body]).action is Action.DELIVER
    assert run(pol, eml("To: a@b.org"), findings=[att]).action is Action.HOLD


def test_distinct_count_unites_digests_and_adds_plain_counts() -> None:
    """The same identifier in two places counts once; findings without digests add their count."""
    same = [nhs(3), nhs(3, where="attachment:x")]
    assert distinct_count(same) == 3
    assert distinct_count([*same, Finding(kind="nhs_number", where="body", count=4)]) == 7


def _decide_in_child(policy: LoadedPolicy) -> str:
    d = decide(eml("To: a@gmail.com, b@yahoo.com"), Envelope(SENDER, ("a@gmail.com",)),
               Submitter(SENDER, SubmitterKind.NETWORK), policy, limits=ScanSettings(),
               detector=FixedDetector())
    return d.rewrite.value if d.rewrite else "none"


def test_decide_runs_in_a_process_pool(default_policy: LoadedPolicy) -> None:
    """decide and a loaded policy cross a process boundary (the relay may use a pool)."""
    pickle.dumps(decide)
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert pool.submit(_decide_in_child, default_policy).result(timeout=60) == "bcc"
