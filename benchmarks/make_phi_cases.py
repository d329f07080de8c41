"""Write ``tests/fixtures/phi_cases.json``: SYNTHETIC PHI inserted into REAL ROCO CT caption sentences.

Every PHI value below is invented (SYNTHETIC): names, dates, numbers, addresses and contacts belong to no
one known to this project. The carrier sentences are real (ROCO CT captions, CC BY; ``roco_id``,
``pmc_image`` and ``source`` kept per item). Each item records the exact character span and type of every
inserted value, so a detector can be scored span by span (caught = the whole span masked).

The values were written as a list of the forms that occur in reports, independently of the detector's
output; many are deliberately hard (names not in any vocabulary, lower-case names, unusual layouts).
Items alternate between split ``test`` (held out: reported, never used to change a rule) and ``dev``.

    python benchmarks/make_phi_cases.py          # rewrites the fixture (deterministic)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "tests" / "fixtures" / "phi_cases.json"
BLIND_OUT = ROOT / "tests" / "fixtures" / "phi_cases_blind.json"

# (value, type, template) -- "{S}" is the real caption sentence, "{P}" the PHI value. Labels and titles stay
# outside the span: they are not PHI; the value is.
NAMES = [
    ("Jonathan Whitfield", "{S} Reviewed by Dr. {P}."),
    ("Priya Raman", "Dr {P} reported: {S}"),
    ("Hans-Peter Müller", "{S} Discussed with Prof. {P} at the tumour board."),
    ("Eleanor Vance", "Mrs. {P} was referred for imaging. {S}"),
    ("Tomasz Kowalczyk", "{S} Mr. {P} tolerated the examination well."),
    ("Kwame Mensah", "{S} Findings communicated to Dr. {P} by phone."),
    ("J. R. Hartley", "{S} Dictated by Dr. {P}."),
    ("Sofia de la Vega", "{S} Read by Dr. {P}."),
    ("Jane Doe", "{S} Patient Jane Doe was informed.".replace("Jane Doe", "{P}")),
    ("Jane Doe", "{P} presented with abdominal pain. {S}"),
    ("Michael O'Connor", "{S} Results sent to {P}."),
    ("Fatima Al-Sayed", "{S} The patient, {P}, consented to contrast."),
    ("Lucas Moreau", "{P}: {S}"),
    ("Anna Lindqvist", "{S} Referring clinician {P}."),
    ("Oluwaseun Adebayo", "{S} Seen by {P} in clinic."),
    ("Hiroshi Tanaka", "Patient {P}. {S}"),
    ("Emily Carter-Brown", "{S} Copy to {P}."),
    ("Rajesh Kumar", "{S} Scan requested by {P}."),
    ("Margaret Olsen", "Patient: {P}. {S}"),
    ("Samuel Osei", "{S} Referring physician: {P}."),
    ("Rebecca Stein", "{S} {P}, MD"),
    ("A. Novak", "{S} {P}, FRCR"),
    ("DOE^JANE", "Report for {P}. {S}"),
    ("WHITFIELD^JONATHAN^R", "{S} (patient {P})"),
    ("MUELLER^HANS", "{P} {S}"),
    ("TANAKA^HIROSHI", "{S} Name: {P}"),
    ("Doe, Jane", "{S} Patient: {P}."),
    ("Whitfield, Jonathan R.", "{P} - {S}"),
    ("Kowalczyk, Tomasz", "{S} Requested by {P}."),
    ("JOHN SMITH", "{P} {S}"),
    ("MARIA GARCIA", "{S} PATIENT {P}"),
    ("jane doe", "{S} pt {P} aware."),
    ("Siobhan Murphy", "{S} Verified by {P}."),
    ("Mei Ling Chen", "{S} Interpreted by {P}."),
    ("Giovanni Rossi", "{S} Consent signed by {P}."),
    ("Ingrid Johansson", "{P} was scanned after the fall. {S}"),
    ("Ahmed Hassan", "{S} Father {P} present."),
    ("Claire Dubois", "{S} Electronically signed by {P}."),
    ("Pieter van den Berg", "{S} Approved by {P}."),
    ("Nguyen Thi Lan", "{S} Patient name {P}."),
    ("Whitfield", "{S} Dr. {P} to follow up."),
    ("Beatriz Santos", "{S} Technologist: {P}"),
]
DATES = [
    ("March 3rd, 2021", "CT of {P}: {S}"),
    ("03/04/21", "{S} Compared with the prior study dated {P}."),
    ("2021-03-04", "Exam date: {P}. {S}"),
    ("3 Mar 2021", "{S} (scanned {P})"),
    ("03-MAR-2021", "{S} Prior exam {P} for comparison."),
    ("20210304", "{S} Study date {P}."),
    ("4.3.2021", "{S} Untersuchung vom {P}."),
    ("March 2021", "{S} Previous CT in {P} was normal."),
    ("Mar. 3, 2021", "On {P}, {S}"),
    ("3rd of March 2021", "{S} Admitted on the {P}."),
    ("12/11/2019 14:32", "{S} Acquired {P}."),
    ("2019-11-12T08:15:00", "{S} Timestamp {P}."),
    ("Sept 9, 2018", "{S} Follow-up from {P}."),
    ("9 September 2018", "{S} Baseline imaging {P}."),
    ("06/2019", "{S} Last seen {P}."),
    ("Tuesday, May 4, 2021", "{P}: {S}"),
    ("January 15", "{S} Surgery planned for {P}."),
    ("15 Jan", "{S} Biopsy on {P} confirmed the diagnosis."),
    ("1/2/2020", "{S} DOB {P}."),
    ("02.11.1948", "{S} Date of birth: {P}"),
    ("11-02-1948", "{S} Born {P}."),
    ("Feb 11 1948", "{S} DOB: {P}"),
    ("1948/02/11", "{S} Birth date {P}"),
    ("July 4th", "{S} Injury on {P} at home."),
    ("Dec 2020", "{S} Compared with {P}."),
    ("2020-12", "{S} Prior from {P}."),
    ("14 February 2022 at 09:40", "{S} Reported {P}."),
    ("8/17/2013", "{S} Scan performed on {P}."),
    ("31.12.19", "{S} Voruntersuchung {P}."),
    ("the 21st of June", "{S} Discharged on {P}."),
    ("Nov-05-2017", "{S} Previous CT {P}."),
    ("5/11/17", "{S} Outside films dated {P}."),
]
IDS = [
    ("00482913", "{S} MRN {P}."),
    ("A-99812", "MRN: {P}. {S}"),
    ("ACC2021-00042", "{S} Accession #: {P}"),
    ("MRN00482913", "{S} Folder {P}."),
    ("7731-2290", "{S} Patient ID {P}."),
    ("55120987", "{S} Acc. no. {P}"),
    ("078-05-1120", "{S} SSN {P}."),
    ("943 476 5919", "{S} NHS number {P}."),
    ("2019/4471", "{S} Case no. {P}."),
    ("48211-B", "{S} Record number {P}."),
    ("H4471203", "{S} Hospital number {P}."),
    ("E-20210304-0017", "{S} Encounter {P}."),
    ("1.2.840.113619.2.55.3.604688119", "{S} Study UID {P}."),
    ("RX-7731290", "{S} Order {P}."),
    ("000-44-7731", "SSN: {P}. {S}"),
    ("AC88120455", "{S} Accession {P}."),
    ("MR 7712093", "{S} Chart {P}."),
    ("K77120", "{S} Specimen K77120 sent.".replace("K77120", "{P}")),
    ("55-20931", "{S} Insurance ID {P}."),
    ("4471203", "{S} ID {P}"),
]
ADDRESSES = [
    ("123 Main Street", "{S} Home address: {P}."),
    ("45 Oak Avenue, Apt 3B, Springfield, IL 62704", "{S} Lives at {P}."),
    ("7 Elm Rd.", "{S} Resides at {P}"),
    ("221B Baker Street, London NW1 6XE", "{S} Address {P}."),
    ("Hauptstraße 12, 10115 Berlin", "{S} Wohnhaft {P}."),
    ("1600 Pennsylvania Avenue NW", "{S} Transferred from {P}."),
    ("PO Box 4471", "{S} Mail to {P}."),
    ("Boston, MA 02115", "{S} From {P}."),
    ("88 Harbour View Road", "{S} Found at {P} after the fall."),
    ("12 Rue de la Paix, 75002 Paris", "{S} Domicile {P}."),
    ("Flat 4, 19 Kings Road", "{S} Address: {P}"),
    ("SW1A 1AA", "{S} Postcode {P}."),
    ("300 West 57th Street, New York, NY 10019", "{S} Patient lives at {P}."),
    ("9 Church Lane", "{S} Collapsed at {P}."),
    ("Via Roma 22, Milano", "{S} Indirizzo {P}."),
    ("4500 Sunset Boulevard, Los Angeles", "{S} MVC near {P}."),
]
CONTACTS = [
    ("(617) 555-0199", "{S} Call {P} with results."),
    ("617-555-0142", "{S} Contact {P}."),
    ("+44 20 7946 0958", "{S} Daughter's phone {P}."),
    ("jane.doe@hospital.org", "{S} Send report to {P}."),
    ("j.whitfield@stmarys.nhs.uk", "{S} Queries: {P}"),
    ("https://pacs.example.org/study/8812", "{S} Images at {P}"),
    ("555 0134", "{S} Pager {P}."),
    ("+49 30 1234567", "{S} Tel. {P}"),
    ("555.123.4567", "{S} Fax {P}."),
    ("07700 900461", "{S} Mobile {P}."),
    ("www.radiology-portal.example.com", "{S} Report online at {P}."),
    ("10.20.30.40", "{S} Sent from workstation {P}."),
    ("radiology@mercy.example.org", "{S} {P} was notified."),
    ("800-555-0100", "{S} Hotline {P}."),
    ("x4471", "{S} Reading room {P}."),
    ("+1 212 555 0198", "{S} Son: {P}."),
]
AGES = [
    ("92-year-old", "A {P} man. {S}"),
    ("ninety-two-year-old", "{S} The patient is a {P} woman."),
    ("aged 101", "{S} Female, {P}."),
    ("94 yo", "{S} {P} M with dyspnea."),
    ("96 years old", "{S} The patient is {P}."),
    ("ninety-year-old", "{S} A {P} with weight loss."),
    ("one hundred and two years old", "{S} She is {P}."),
    ("in her nineties", "{S} A woman {P} with pain."),
    ("97M", "{P} {S}"),
    ("age 93", "{S} Patient {P}."),
    ("nonagenarian", "{S} A {P} after a fall."),
    ("99-yr-old", "{S} {P} male."),
    ("Ninety-one year old", "{P} female. {S}"),
    ("104 years of age", "{S} Patient {P}."),
    ("91 y/o", "{S} {P} F."),
    ("ninety-eight", "{S} Age: {P}."),
]
LOCATIONS = [
    ("St. Mary's Hospital", "{S} Transferred from {P}."),
    ("Massachusetts General Hospital", "{S} Outside study from {P}."),
    ("Royal Infirmary of Edinburgh", "{S} Performed at the {P}."),
    ("/data/pacs/Smith_John_00482913/series3", "{S} Source {P}"),
    ("Riverside Imaging Center", "{S} Prior at {P}."),
    ("Klinikum Rechts der Isar", "{S} Zuweisung {P}."),
]

TYPES = {"name": NAMES, "date": DATES, "id": IDS, "address": ADDRESSES, "contact": CONTACTS, "age": AGES,
         "location": LOCATIONS}

# The blind set: written after the rules had been fixed on the set above, and measured once.
BLIND = {
    "name": [
        ("Theodore Blackwood", "{S} Case discussed with Dr. {P} (radiology)."),
        ("Aisling Byrne", "{S} Nurse {P} assisted."),
        ("Krzysztof Wiśniewski", "{S} Attending: Dr {P}."),
        ("Naomi Feldman-Katz", "Ms {P} returned for follow-up. {S}"),
        ("Rosalind Okafor", "{S} Results phoned to {P}."),
        ("Bartholomew Quigley", "{S} Report verified by {P}, MD."),
        ("Ana Paula Ferreira", "{P} (referring) - {S}"),
        ("Yusuf Demir", "{S} Seen with {P} from cardiology."),
        ("Chloe Martin", "{S} The patient Chloe Martin agreed to CT.".replace("Chloe Martin", "{P}")),
        ("Henrik Sørensen", "{S} Signed: {P}"),
        ("OKAFOR^ROSALIND^N", "{S} PatientName {P}"),
        ("BLACKWOOD^THEO", "{P}: {S}"),
        ("Fitzgerald, Maeve", "{S} Pt: {P}."),
        ("Dmitri Volkov", "{S} Interpreting radiologist {P}."),
        ("Leila Haddad", "{S} {P} was counselled about the findings."),
        ("Graham", "{S} Mr {P} declined contrast."),
        ("Olumide Bankole", "{S} Dictated: {P}."),
        ("Sarah-Louise Pemberton", "{S} Cc Dr {P}."),
        ("W. H. Ashworth", "{S} Consultant: {P}"),
        ("Esperanza Villanueva", "{S} {P} (daughter) gave the history."),
    ],
    "date": [
        ("Oct 14, 2020", "{S} Prior CT {P} showed a smaller lesion."),
        ("14/10/2020", "{S} Letzte Untersuchung {P}."),
        ("2020.10.14", "{S} Date {P}."),
        ("14-Oct-20", "{S} Scan {P}."),
        ("October 14th", "{S} Planned for {P}."),
        ("10/14/2020 09:05", "{S} Exam time {P}."),
        ("Wednesday 14 October 2020", "{S} Reported on {P}."),
        ("Oct 2020", "{S} Unchanged since {P}."),
        ("14th Oct 2020", "{S} Compared to {P}."),
        ("20201014", "{S} StudyDate={P}"),
        ("1939-07-22", "{S} DOB {P}."),
        ("22 July 1939", "{S} Born on {P}."),
        ("7/22/39", "{S} Birthdate {P}."),
        ("Jul. 22", "{S} Fell on {P}."),
    ],
    "id": [
        ("00731942", "{S} Med rec # {P}."),
        ("CT-2020-118842", "{S} Exam {P}."),
        ("RJ7731942", "{S} Hosp no {P}."),
        ("321-54-9876", "{S} Social security {P}."),
        ("MRN-0044812", "{S} {P} on the requisition."),
        ("8812 4471 09", "{S} NHS no. {P}."),
        ("A00173492", "{S} Acc {P}."),
        ("19480211-2234", "{S} Personnummer {P}."),
        ("2.25.329800735698586629295641978511506172918", "{S} SOP UID {P}."),
        ("771203", "{S} Patient #{P}."),
    ],
    "address": [
        ("742 Evergreen Terrace", "{S} Home: {P}."),
        ("15 Willow Crescent, Leeds LS6 2AB", "{S} Patient address {P}."),
        ("Apt 12C, 410 East 72nd Street", "{S} Address on file: {P}."),
        ("Bahnhofstrasse 5, 8001 Zürich", "{S} Wohnort {P}."),
        ("2200 Hillcrest Drive, Austin, TX 78701", "{S} Mailing address {P}."),
        ("Calle Mayor 14, Madrid", "{S} Domicilio {P}."),
        ("Seattle, WA 98101", "{S} Referred from {P}."),
        ("Unit 3, 27 Marine Parade", "{S} Found collapsed at {P}."),
    ],
    "contact": [
        ("+33 1 42 68 53 00", "{S} Téléphone {P}."),
        ("(212) 555-0147 ext. 22", "{S} Reach the ward at {P}."),
        ("020 7946 0321", "{S} Call {P}."),
        ("t.blackwood@northgate-radiology.example.com", "{S} Email {P}."),
        ("http://10.1.4.22:8042/viewer?study=771203", "{S} Viewer: {P}"),
        ("415.555.0176", "{S} Cell {P}."),
        ("bleep 4471", "{S} Registrar on {P}."),
        ("+1-303-555-0188", "{S} Contact number {P}."),
    ],
    "age": [
        ("93-year-old", "{S} History: {P} with falls."),
        ("ninety-six-year-old", "{S} A frail {P} man."),
        ("aged ninety-nine", "{S} Male, {P}."),
        ("95yo", "{S} {P} F."),
        ("102 years", "{S} Age {P}."),
        ("mid-nineties", "{S} A woman in her {P}."),
        ("90 years old", "{S} The patient is {P}."),
        ("Age 91", "{P}. {S}"),
    ],
    "location": [
        ("Northgate General Hospital", "{S} Prior imaging at {P}."),
        ("Mount Sinai Medical Center", "{S} Transferred from {P}."),
        ("Hôpital Saint-Louis", "{S} Adressé par {P}."),
        ("C:\\PACS\\export\\Blackwood_T\\IMG0001.dcm", "{S} File {P}"),
        ("Lakeside Imaging Centre", "{S} Outside CT from {P}."),
    ],
}


def _sentences(data_dir: Path) -> list[tuple[dict, str]]:
    from keyslice.sample import _SENTENCE_SPLIT

    items = json.loads((data_dir / "roco_ct_captions" / "captions.json").read_text())
    out = []
    for item in items:
        for sentence in _SENTENCE_SPLIT.split(item["caption"].strip()):
            if 25 <= len(sentence) <= 220:
                out.append((item, sentence.strip()))
    return out


def _fill(template: str, sentence: str, value: str) -> tuple[str, tuple[int, int]]:
    head, tail = template.split("{P}")
    head = head.replace("{S}", sentence)
    tail = tail.replace("{S}", sentence)
    return head + value + tail, (len(head), len(head) + len(value))


def build(data_dir: Path, types: dict = TYPES, seed: int = 20261130, blind: bool = False) -> dict:
    rng = random.Random(seed)
    sentences = _sentences(data_dir)
    rng.shuffle(sentences)
    cases, k = [], 0
    pairs = [(kind, value, template) for kind, values in types.items() for value, template in values]
    # every value once on its own, then every value a second time combined with one of another type
    plan = [[p] for p in pairs] + [[p, rng.choice([q for q in pairs if q[0] != p[0]])] for p in pairs]
    for n, group in enumerate(plan):
        item, sentence = sentences[k % len(sentences)]
        k += 1
        text, spans = sentence, []
        for kind, value, template in group:
            new_text, (start, end) = _fill(template, text, value)
            shift = len(template.split("{S}")[0].replace("{P}", value))
            spans = [{**s, "start": s["start"] + shift, "end": s["end"] + shift} for s in spans]
            spans.append({"start": start, "end": end, "type": kind, "value": value})
            text = new_text
        for s in spans:
            assert text[s["start"]:s["end"]] == s["value"], (text, s)
        split = "blind" if blind else ("test" if n % 2 == 0 else "dev")
        cases.append({"id": f"phi-{'b' if blind else ''}{n:03d}", "split": split, "text": text,
                      "spans": sorted(spans, key=lambda s: s["start"]), "carrier_sentence": sentence,
                      "roco_id": item["roco_id"], "pmc_image": item["pmc_image"], "source": item["source"],
                      "license": item["license"]})
    return {
        "description": ("SYNTHETIC PHI (invented names, dates, identifiers, addresses, contacts, ages over 89 and "
                        "institutions) inserted into REAL ROCO CT caption sentences (CC BY; roco_id, pmc_image and "
                        "source kept per item). Spans give the exact characters of each inserted value and its "
                        "type; titles and labels ('Dr.', 'MRN') are outside the span. Generated by "
                        "benchmarks/make_phi_cases.py."),
        "types": sorted(types),
        "cases": cases,
    }


def main() -> None:
    from keyslice.sample import data_dir

    fixture = build(data_dir())
    OUT.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    n_spans = sum(len(c["spans"]) for c in fixture["cases"])
    print(f"{len(fixture['cases'])} cases, {n_spans} spans -> {OUT.relative_to(ROOT)}")
    blind = build(data_dir(), BLIND, seed=20261201, blind=True)
    if BLIND_OUT.exists():  # the floor is set from the one measurement; keep it
        old = json.loads(BLIND_OUT.read_text())
        blind = {"description": blind["description"], "first_measurement": old.get("first_measurement"),
                 "floor": old.get("floor"), "types": blind["types"], "cases": blind["cases"]}
    blind["description"] += " Blind set: written after the rules were fixed on phi_cases.json, measured once."
    BLIND_OUT.write_text(json.dumps(blind, indent=1, ensure_ascii=False) + "\n")
    n_spans = sum(len(c["spans"]) for c in blind["cases"])
    print(f"{len(blind['cases'])} cases, {n_spans} spans -> {BLIND_OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
