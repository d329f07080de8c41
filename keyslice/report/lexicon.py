"""Word lists of the rule-based report segmenter.

Everything the rules know lives here as data: organ terms, the TotalSegmentator
labels of each canonical organ, laterality words, phase phrases, ConText-style
triggers and abnormality targets. The ``ks_terms`` component of :mod:`.pipeline`
turns these lists into one ``PhraseMatcher`` (attribute ``LOWER``), so matching is
case-insensitive and tokenised exactly like the report text; the two regexes below
(vertebral levels, disease-shaped words) are evaluated once per distinct word.

Canonical organ names are the keys of :data:`ORGAN_TS_LABELS`. A term may name
several organs (``hepatosplenomegaly`` -> liver + spleen).
"""

from __future__ import annotations

# --- TotalSegmentator v2 ("total" task) labels --------------------------------
# Names checked against shared/data/totalsegmentator_reference/totalsegmentator_total_labels.json
# (tests/test_report_segment.py::test_organ_labels_are_totalsegmentator_names asserts it).

_LUNG_LEFT = ("lung_upper_lobe_left", "lung_lower_lobe_left")
_LUNG_RIGHT = ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")
_VERTEBRAE = tuple(
    [f"vertebrae_C{i}" for i in range(1, 8)]
    + [f"vertebrae_T{i}" for i in range(1, 13)]
    + [f"vertebrae_L{i}" for i in range(1, 6)]
    + ["vertebrae_S1"]
)
_RIBS_LEFT = tuple(f"rib_left_{i}" for i in range(1, 13))
_RIBS_RIGHT = tuple(f"rib_right_{i}" for i in range(1, 13))


def _lr(stem: str) -> tuple[str, str]:
    return (f"{stem}_left", f"{stem}_right")


_BONES = (
    _VERTEBRAE
    + ("sacrum",)
    + _RIBS_LEFT
    + _RIBS_RIGHT
    + ("sternum", "costal_cartilages", "skull")
    + _lr("clavicula")
    + _lr("scapula")
    + _lr("humerus")
    + _lr("femur")
    + _lr("hip")
)

#: canonical organ -> TotalSegmentator v2 label names (all sides). An empty tuple
#: means the structure is recognised in text but has no label in the "total" task
#: (the slice selector then falls back to its mask-free path).
ORGAN_TS_LABELS: dict[str, tuple[str, ...]] = {
    # the 15 organs of the brief
    "aorta": ("aorta",),
    "colon": ("colon",),
    "duodenum": ("duodenum",),
    "esophagus": ("esophagus",),
    "gallbladder": ("gallbladder",),
    "heart": ("heart",),
    "kidney": ("kidney_left", "kidney_right"),
    "liver": ("liver",),
    "pancreas": ("pancreas",),
    "stomach": ("stomach",),
    "spleen": ("spleen",),
    "thyroid gland": ("thyroid_gland",),
    "urinary bladder": ("urinary_bladder",),
    "trachea": ("trachea",),
    "lung": _LUNG_LEFT + _LUNG_RIGHT,
    # further abdominal / thoracic structures
    "adrenal gland": ("adrenal_gland_left", "adrenal_gland_right"),
    "small bowel": ("small_bowel",),
    "prostate": ("prostate",),
    "brain": ("brain",),
    # proxies: the pleura and the bile ducts have no label; their findings lie in
    # the lung / liver+gallbladder masks' region, which is what slice selection needs.
    "pleura": _LUNG_LEFT + _LUNG_RIGHT,
    "bile duct": ("liver", "gallbladder"),
    "lymph node": (),
    # bones
    "spine": _VERTEBRAE,
    "sacrum": ("sacrum",),
    "rib": _RIBS_LEFT + _RIBS_RIGHT,
    "sternum": ("sternum",),
    "clavicle": _lr("clavicula"),
    "scapula": _lr("scapula"),
    "humerus": _lr("humerus"),
    "femur": _lr("femur"),
    "hip bone": _lr("hip"),
    "skull": ("skull",),
    "bone": _BONES,
    "spinal cord": ("spinal_cord",),
    "iliopsoas muscle": _lr("iliopsoas"),
    # vessels
    "portal vein": ("portal_vein_and_splenic_vein",),
    "splenic vein": ("portal_vein_and_splenic_vein",),
    "inferior vena cava": ("inferior_vena_cava",),
    "superior vena cava": ("superior_vena_cava",),
    "pulmonary artery": (),  # not a label of TotalSegmentator v2 "total"
    "pulmonary vein": ("pulmonary_vein",),
    "iliac artery": _lr("iliac_artery"),
    "iliac vein": _lr("iliac_vena"),
    "carotid artery": _lr("common_carotid_artery"),
    "subclavian artery": _lr("subclavian_artery"),
    "brachiocephalic trunk": ("brachiocephalic_trunk",),
    "brachiocephalic vein": _lr("brachiocephalic_vein"),
}

#: per side, for organs whose labels are sided; others ignore laterality.
_SIDED: dict[str, dict[str, tuple[str, ...]]] = {
    "lung": {"left": _LUNG_LEFT, "right": _LUNG_RIGHT},
    "pleura": {"left": _LUNG_LEFT, "right": _LUNG_RIGHT},
    "rib": {"left": _RIBS_LEFT, "right": _RIBS_RIGHT},
}


def ts_labels_for(organ: str, laterality: str | None) -> list[str]:
    """TotalSegmentator labels of ``organ``, restricted to one side when ``laterality`` is left/right.

    ``None`` and ``"bilateral"`` give both sides. Unknown organs give ``[]``.
    """
    labels = ORGAN_TS_LABELS.get(organ, ())
    if laterality not in ("left", "right"):
        return list(labels)
    if organ in _SIDED:
        return list(_SIDED[organ][laterality])
    sided = [lab for lab in labels if lab.endswith("_" + laterality)]
    unsided = [lab for lab in labels if not (lab.endswith("_left") or lab.endswith("_right"))]
    return sided + unsided if sided else list(labels)


#: organs that come in pairs (laterality words apply to them)
PAIRED_ORGANS = frozenset(
    {"kidney", "adrenal gland", "lung", "pleura", "rib", "clavicle", "scapula", "humerus", "femur",
     "hip bone", "iliopsoas muscle", "iliac artery", "iliac vein", "carotid artery",
     "subclavian artery", "brachiocephalic vein"}
)

# --- organ terms: phrase -> canonical organ(s) --------------------------------
# Lowercase; matched on the LOWER attribute. Longest match wins among organ terms
# ("splenic vein" beats "splenic", "gall bladder" beats "bladder").
# Rule of thumb used here AND in the hand labels: an adjective or derived word names
# the organ ("hepatic", "renal", "splenomegaly", "perihepatic"), "para-" locations
# do not ("paratracheal node" is a lymph node, not the trachea).

ORGAN_TERMS: dict[str, tuple[str, ...]] = {}


def _add(organs: str | tuple[str, ...], *terms: str) -> None:
    organs = (organs,) if isinstance(organs, str) else organs
    for term in terms:
        ORGAN_TERMS[term] = organs


_add("liver", "liver", "livers", "hepatic", "hepato", "hepatomegaly", "hepatocellular", "intrahepatic",
     "intra-hepatic", "perihepatic", "peri-hepatic", "subhepatic", "hepatitis", "hepatectomy", "caudate lobe",
     "hepatic lobe", "hepatic segment", "hepatoma", "hepatoblastoma", "cirrhosis", "cirrhotic", "steatosis")
_add(("liver", "spleen"), "hepatosplenomegaly")
_add("spleen", "spleen", "spleens", "splenic", "splenomegaly", "perisplenic", "peri-splenic", "splenectomy",
     "intrasplenic", "splenic parenchyma")
_add("kidney", "kidney", "kidneys", "renal", "nephromegaly", "nephrocalcinosis", "nephrolithiasis",
     "hydronephrosis", "pyelonephritis", "nephrectomy", "perinephric", "perirenal", "peri-renal",
     "renal pelvis", "nephrogenic", "nephric", "postpyelonephritic")
_add("adrenal gland", "adrenal", "adrenals", "adrenal gland", "adrenal glands", "suprarenal", "adrenalectomy")
_add("lung", "lung", "lungs", "pulmonary", "pneumonia", "pneumonitis", "bronchus", "bronchi", "bronchial",
     "bronchiectasis", "bronchioles", "bronchiolitis", "emphysema", "lobectomy", "pneumothorax",
     "upper lobe", "lower lobe", "middle lobe", "lingula", "lingular", "intrapulmonary",
     "lung parenchyma", "pneumothoraces")
_add("pleura", "pleura", "pleural", "hemothorax", "haemothorax", "empyema", "hydrothorax", "pleural effusion",
     "pleural effusions", "subpleural")
_add("heart", "heart", "cardiac", "cardiomegaly", "pericardial", "pericardium", "myocardium", "myocardial",
     "ventricle", "ventricles", "ventricular", "atrium", "atria", "atrial", "intracardiac", "coronary",
     "epicardial", "endocardial", "pericarditis", "myocarditis")
_add("aorta", "aorta", "aortae", "aortas", "aortic", "aortic arch", "aaa", "aorta abdominalis", "periaortic",
     "aortitis")
_add(("aorta", "iliac artery"), "aortoiliac", "aorto-iliac")
_add("esophagus", "esophagus", "oesophagus", "esophageal", "oesophageal", "esophagitis", "oesophagitis",
     "esophagectomy", "oesophagectomy")
_add(("stomach", "esophagus"), "gastroesophageal", "gastro-esophageal", "gastro-oesophageal",
     "gastroesophageal junction", "esophagogastric")
_add("stomach", "stomach", "gastric", "gastritis", "gastrectomy", "pylorus", "pyloric", "gastric antrum",
     "intragastric", "perigastric")
_add("duodenum", "duodenum", "duodenal", "duodenitis")
_add(("pancreas", "duodenum"), "pancreaticoduodenectomy", "pancreatoduodenectomy")
_add("small bowel", "small bowel", "small-bowel", "small intestine", "small intestinal", "jejunum", "jejunal",
     "ileum", "ileal", "bowel", "bowels", "intestine", "intestines", "intestinal", "enteritis")
_add(("small bowel", "colon"), "ileocecal", "ileocaecal", "ileocolic")
_add("colon", "colon", "colonic", "colons", "large bowel", "large intestine", "cecum", "caecum", "cecal",
     "caecal", "sigmoid", "rectum", "rectal", "rectosigmoid", "colitis", "colectomy", "pericolic",
     "pericolonic", "perirectal", "anorectum", "anorectal", "transverse colon", "descending colon", "ascending colon")
_add("gallbladder", "gallbladder", "gall bladder", "gallbladders", "cholecystitis", "cholelithiasis",
     "cholecystectomy", "gallstone", "gallstones", "gall stone", "gall stones", "pericholecystic",
     "cholecystic")
_add("bile duct", "bile duct", "bile ducts", "biliary", "common bile duct", "cbd", "cholangiocarcinoma",
     "cholangitis", "choledocholithiasis", "hepatic duct", "choledochal", "hepatobiliary")
_add("pancreas", "pancreas", "pancreatic", "pancreatitis", "peripancreatic", "pancreatectomy",
     "pancreatic duct", "uncinate process")
_add("thyroid gland", "thyroid", "thyroid gland", "thyroidectomy", "goiter", "goitre", "thyroiditis")
_add("urinary bladder", "urinary bladder", "bladder", "bladders", "vesical", "perivesical", "cystitis",
     "intravesical", "cystectomy")
_add("trachea", "trachea", "tracheal", "endotracheal", "tracheostomy", "tracheomalacia")
_add("lymph node", "lymph node", "lymph nodes", "node", "nodes", "nodal", "lymphadenopathy", "adenopathy",
     "lymphadenopathies", "lymphonodes", "lymphonode", "lymphadenitis")
_add("prostate", "prostate", "prostatic", "prostatectomy")
_add("brain", "brain", "cerebral", "cerebellum", "cerebellar", "intracranial", "intracerebral")
_add("spine", "spine", "spinal", "vertebra", "vertebrae", "vertebral", "vertebral body", "vertebral bodies",
     "lumbar spine", "thoracic spine", "cervical spine", "intervertebral", "spondylodiscitis", "spondylitis",
     "discitis", "scoliosis", "kyphosis")
_add("spinal cord", "spinal cord", "myelopathy")
_add("sacrum", "sacrum", "sacral")
_add("rib", "rib", "ribs", "costal")
_add("sternum", "sternum", "sternal")
_add("clavicle", "clavicle", "clavicles", "clavicular")
_add("scapula", "scapula", "scapulae", "scapular")
_add("humerus", "humerus", "humeral")
_add("femur", "femur", "femora", "femoral", "femoral head", "femoral neck")
_add("hip bone", "iliac bone", "ilium", "ischium", "ischial", "pubis", "pubic", "pubic ramus", "iliopubic",
     "iliopubic ramus", "acetabulum", "acetabular", "iliac wing", "iliac crest", "iliac crests",
     "pelvic bone", "pelvic bones")
_add("skull", "skull", "calvarium", "calvaria")
_add("bone", "bone", "bones", "osseous", "skeletal", "bony")
_add("iliopsoas muscle", "psoas", "iliopsoas", "psoas muscle", "iliopsoas muscle")
_add("portal vein", "portal vein", "portal veins", "portal venous system", "portal confluence",
     "portal venous gas", "portomesenteric", "periportal")
_add("splenic vein", "splenic vein")
_add("inferior vena cava", "inferior vena cava", "ivc", "vena cava inferior", "infrarenal ivc")
_add("superior vena cava", "superior vena cava", "svc", "vena cava superior")
_add("pulmonary artery", "pulmonary artery", "pulmonary arteries", "pulmonary arterial", "pulmonary embolism",
     "pulmonary emboli", "pulmonary embolus", "pulmonary angiogram", "pulmonary angiography", "pulmonary trunk", "main pulmonary artery")
_add("pulmonary vein", "pulmonary vein", "pulmonary veins")
_add("iliac artery", "iliac artery", "iliac arteries", "common iliac artery", "external iliac artery",
     "internal iliac artery")
_add("iliac vein", "iliac vein", "iliac veins")
_add("carotid artery", "carotid", "carotid artery", "carotid arteries", "common carotid artery")
_add("subclavian artery", "subclavian artery", "subclavian arteries")
_add("brachiocephalic trunk", "brachiocephalic trunk", "brachiocephalic artery", "innominate artery")
_add("brachiocephalic vein", "brachiocephalic vein", "brachiocephalic veins", "innominate vein")

#: phrases that look like organ terms but are not the organ (matched as organ "" and dropped)
ORGAN_BLOCKERS = (
    # display settings are not findings
    "lung window", "lung windows", "lung windowing", "lung window settings", "pulmonary window", "bone window",
    "bone windows", "bone algorithm", "bone kernel", "lung kernel", "lung algorithm",
    # vessels named after an organ are not that organ (and have no TotalSegmentator label)
    "hepatic artery", "hepatic arteries", "common hepatic artery", "proper hepatic artery", "hepatic vein",
    "hepatic veins", "hepatic vessels", "splenic artery", "splenic arteries", "splenic vessels", "renal artery",
    "renal arteries", "renal vein", "renal veins", "renal vessels", "gastric artery", "gastric arteries",
    "gastric vein", "gastric veins", "gastroduodenal artery", "pancreaticoduodenal artery", "femoral artery",
    "femoral arteries", "femoral vein", "femoral veins", "common femoral artery", "common femoral vein",
    "bronchial artery", "bronchial arteries", "thyroid artery", "intercostal artery", "adrenal vein",
    "adrenal veins", "gonadal vein",
)

#: vertebral level tokens (C1..C7, T1..T12, Th1.., L1..L5, S1) -> spine (regex on the lowercased token)
VERTEBRAL_LEVEL_REGEX = r"^(?:c[1-7]|th?(?:1[0-2]|[1-9])|l[1-5]|s1)$"

# --- laterality ----------------------------------------------------------------
LATERALITY_TERMS: dict[str, str] = {
    "left": "left", "right": "right", "bilateral": "bilateral", "bilaterally": "bilateral",
    "both sides": "bilateral", "left and right": "bilateral", "right and left": "bilateral",
    }
#: words after left/right that make the side a heart chamber or a region, not an organ side
LATERALITY_BLOCK_NEXT = frozenset(
    {"ventricle", "ventricular", "atrium", "atrial", "heart", "coronary", "circumflex", "ventricles"}
)
#: plural organ words that make "both" bilateral ("both kidneys")
BOTH_PLURALS = frozenset(
    {"kidneys", "lungs", "adrenals", "adrenal", "sides", "hemithoraces", "lobes", "ovaries", "breasts",
     "femurs", "femora", "psoas", "iliac", "pleural", "lower", "upper"}
)

# --- phases ----------------------------------------------------------------------
# (phrase, phase, tier). Tier decides which hint wins inside one sentence:
#   3 explicit phase word, 2 implicit arterial (hypervascular...), 1 generic contrast
#   (CECT, contrast-enhanced, "enhancing" -> portal_venous), 0 calcification/stone ->
#   non_contrast (only used when nothing of tier >= 1 is present: a stone or a
#   calcification is best seen without contrast, so it asks for the unenhanced series
#   when the text does not name one).
PHASE_TERMS: list[tuple[str, str, int]] = []


def _phase(phase: str, tier: int, *terms: str) -> None:
    PHASE_TERMS.extend((t, phase, tier) for t in terms)


_phase("arterial", 3, "arterial phase", "late arterial", "early arterial", "arterial-phase", "hepatic arterial phase",
       "arterial phases", "ct angiography", "ct angiogram", "cta", "angio-ct", "ct-angiography", "ct-angiograph",
       "ct arteriography", "angiography", "angiographic", "arteriography", "angiogram", "computed tomography angiography",
       "pulmonary angiogram", "pulmonary angiography", "arteriographic")
_phase("portal_venous", 3, "portal venous phase", "portal phase", "venous phase", "portovenous phase",
       "portal-venous phase", "portal venous", "portovenous", "pv phase", "portalvenous", "portalvenous phase", "nephrographic phase", "nephrographic")
_phase("delayed", 3, "delayed", "delayed phase", "delayed-phase", "excretory", "excretory phase", "urographic phase",
       "equilibrium phase", "pyelographic phase", "ct urography", "ct urogram", "late phase")
_phase("non_contrast", 3, "non-contrast", "noncontrast", "non contrast", "unenhanced", "non-enhanced", "nonenhanced",
       "non enhanced", "without contrast", "without intravenous contrast", "without iv contrast",
       "without i.v. contrast", "precontrast", "pre-contrast", "plain ct", "plain abdominal ct", "plain computed tomography",
       "nect", "ncct", "non-contrast-enhanced", "noncontrast-enhanced", "native ct", "before contrast",
       "prior to contrast", "without contrast enhancement")
_phase("arterial", 2, "hypervascular", "hypervascularity", "arterially enhancing", "arterial enhancement",
       "arterial hyperenhancement", "hyperenhancing", "hyperenhancement", "hyperarterial", "arterialized",
       "avidly enhancing", "blush", "active extravasation", "pseudoaneurysm",
       "hypervascularized")
_phase("portal_venous", 1, "cect", "contrast-enhanced", "contrast enhanced", "enhanced ct", "enhanced", "enhancing",
       "enhancement", "with contrast", "with intravenous contrast", "with iv contrast", "post-contrast",
       "postcontrast", "iv contrast", "intravenous contrast", "i.v. contrast", "contrast media", "contrast medium",
       "contrast material", "contrast agent", "contrast ct", "contrast-ct", "hypovascular", "hypovascularized",
       "hypoenhancing", "hypo enhancing", "after contrast", "following contrast")
_phase("non_contrast", 0, "calcification", "calcifications", "calcified", "calculus", "calculi", "stone", "stones",
       "gallstone", "gallstones", "gall stone", "gall stones", "nephrolithiasis", "urolithiasis", "cholelithiasis",
       "nephrocalcinosis", "calcific", "microcalcifications", "lithiasis")

#: "portal venous" is a phase only when followed by one of these (or nothing): not in "portal venous gas"
PORTAL_VENOUS_PHASE_NEXT = frozenset(
    {"phase", "phases", "ct", "images", "image", "imaging", "scan", "scans", "series", "acquisition", "study", "(",
     ",", ".", ";", ")", "and", "reconstruction", "coronal", "axial", "sagittal", "demonstrating", "showing", "shows"}
)

# --- ConText-style triggers ---------------------------------------------------------
# kinds: NEG_PRE/NEG_POST (negation, forward/backward scope), UNC_PRE/UNC_POST
# (uncertainty), HIST_PRE (historical or hypothetical: counted like uncertainty),
# NORMAL (an assertion of normality, no scope), PSEUDO (looks like a trigger but is
# not: "no change", "without contrast"), TERM (ends a scope: "but", "however"...).
CONTEXT_TERMS: dict[str, tuple[str, ...]] = {
    "NEG_PRE": (
        "no", "not", "without", "negative for", "free of", "no evidence of", "no evidence for", "no sign of",
        "no signs of", "nor", "neither", "no definite", "no obvious", "no significant",
        "no suspicious", "no new", "no residual", "no focal", "no acute", "without evidence of", "without any",
        "without signs of", "resolution of", "complete regression of", "complete resolution of",
        "disappearance of", "rules out", "never", "denies", "non-visualization of", "no longer",
        "no further", "no other", "exclusion of", "there is no", "there are no", "there was no", "there were no",
    ),
    "NEG_POST": (
        "not seen", "not identified", "not visualized", "not visualised", "not demonstrated", "not detected",
        "not present", "not evident", "not appreciated", "has resolved", "have resolved",
        "resolved", "ruled out", "was excluded", "were excluded", "is excluded", "no longer visible",
        "no longer seen", "no longer visualized", "not shown", "not enlarged", "not dilated", "not observed",
        "not found", "disappeared", "have disappeared", "has disappeared", "not thickened",
    ),
    # absence words negate a finding ("absence of focal lesions" -> normal) but, said of an
    # organ itself with no finding word ("absence of the inferior vena cava"), mean an anomaly
    "ABSENT_PRE": ("absence of", "non-visualization of", "nonvisualization of", "agenesis of", "absent"),
    "ABSENT_POST": ("is absent", "are absent", "was absent", "were absent"),
    "UNC_PRE": (
        "possible", "possibly", "probable", "probably", "likely", "most likely", "more likely", "unlikely",
        "questionable", "question of", "suspected", "suspicious for", "suspicion of", "suspicion for",
        "concerning for", "concern for", "may represent", "may be", "might be", "might represent",
        "could represent", "could be", "can not exclude", "cannot exclude", "cannot rule out", "can not rule out",
        "differential diagnosis", "differential includes", "equivocal", "indeterminate",
        "suggestive of", "suggesting", "suggests", "presumed", "presumably", "worrisome for", "raising the possibility",
        "r/o", "rule out", "to rule out", "to exclude", "uncertain",
        "suspicious of", "query",
    ),
    "UNC_POST": (
        "cannot be excluded", "can not be excluded", "cannot be ruled out", "can not be ruled out", "not excluded",
        "is not excluded", "are not excluded", "is suspected", "are suspected", "was suspected", "were suspected",
        "is possible", "is likely", "are likely", "is questionable", "not ruled out", "is uncertain",
        "is probable", "was considered", "were considered", "is considered", "?", "is unclear", "are unclear",
        "remains unclear", "remain unclear", "is equivocal", "is indeterminate",
    ),
    # both directions: "cyst versus abscess" hedges both words
    "UNC_BI": ("versus", "vs", "vs.", "or possibly", "and/or"),
    "HIST_PRE": (
        "history of", "h/o", "hx of", "status post", "s/p", "previous history", "known history", "presented with",
        "presenting with", "complaining of", "admitted with", "if", "should", "recommend", "recommended",
        "recommendation", "to evaluate", "evaluate for", "evaluation for", "follow-up is", "correlation is",
        "prior to her diagnosis", "prior to his diagnosis", "performed for", "obtained to evaluate", "for evaluation of",
        "diagnosed with", "with a diagnosis of",
    ),
    "NORMAL": (
        "normal", "normally", "unremarkable", "within normal limits", "wnl", "normal in size", "normal size",
        "normal appearance", "normal-appearing", "normal appearing", "intact", "patent", "preserved",
        "normalization of", "normalisation of", "adequate",
        "appears normal", "appear normal", "are normal", "is normal", "normal-sized", "normal sized",
    ),
    "PSEUDO": (
        "no change", "no significant change", "no interval change", "no definite change", "not only",
        "without contrast", "without intravenous contrast", "without iv contrast", "without i.v. contrast",
        "no contrast", "not been", "no increase", "without difficulty", "no longer than", "not necessarily",
        "not certain whether", "gram negative", "no sooner", "without change", "not changed",
        "with and without contrast", "with and without", "not well", "not clearly",
        "likely due to", "not to be", "whether or not", "no further change", "not significantly changed",
        "should be noted", "if any", "either side", "history of present illness",
    ),
    "TERM": (
        "but", "however", "although", "though", "except", "apart from", "aside from", "which", "whereas", "while",
        "yet", "other than", "with the exception of", "nevertheless", "due to", "secondary to", "caused by",
        "as well as", "in addition", "also", "and there", "shows", "showed", "reveals", "revealed",
        "demonstrates", "demonstrated", "there is", "there are", "cause of", "source of", "reason for",
        "now", "currently", "presently", "today", "at present",
    ),
}

#: abnormality targets (what ConText modifiers act on). Also matched: words ending in
#: -oma(s), -itis, -osis/-oses, -megaly, -pathy, -ectasis, -ectomy (see TARGET_SUFFIX_REGEX).
TARGET_TERMS: tuple[str, ...] = (
    "mass", "masses", "lesion", "lesions", "tumor", "tumors", "tumour", "tumours", "cyst", "cysts", "cystic",
    "pseudocyst", "nodule", "nodules", "nodular", "micronodules", "neoplasm", "neoplasms", "malignancy",
    "malignant", "carcinoma", "cancer", "cancers", "metastasis", "metastases", "metastatic", "lymphoma",
    "sarcoma", "abscess", "abscesses", "collection", "collections", "fluid", "effusion", "effusions",
    "ascites", "hematoma", "haematoma", "hematomas", "hemorrhage", "haemorrhage", "bleeding", "bleed", "thrombus",
    "thrombi", "thrombosis", "thrombosed", "clot", "clots", "embolism", "embolus", "emboli", "aneurysm",
    "aneurysms", "pseudoaneurysm", "dissection", "flap", "stenosis", "occlusion", "occluded", "obstruction",
    "dilatation", "dilation", "dilated", "distended", "distension", "distention", "enlarged", "enlargement",
    "thickening", "thickened", "thick", "stranding", "inflammation", "inflammatory", "inflamed", "edema",
    "oedema", "edematous", "swollen", "swelling", "consolidation", "consolidations", "opacity", "opacities",
    "ground glass", "ground-glass", "ggo", "ggos", "infiltrate", "infiltrates", "infiltration", "infiltrations",
    "atelectasis", "collapse", "collapsed", "pneumothorax", "pneumonia", "emphysema", "fibrosis", "honeycombing",
    "fracture", "fractures", "fractured", "lytic", "sclerotic", "destruction", "erosion", "calcification",
    "calcifications", "calcified", "calculus", "calculi", "stone", "stones", "gallstone", "gallstones",
    "gas", "air", "pneumoperitoneum", "pneumatosis", "perforation", "leak", "leakage", "extravasation", "hernia",
    "herniation", "intussusception", "volvulus", "diverticula", "diverticulum", "diverticulums", "hydronephrosis",
    "lymphadenopathy", "adenopathy", "hypodense", "hypodensity", "hypodensities", "hyperdense", "hyperdensity",
    "hypoattenuating", "hyperattenuating", "hypoattenuation", "low attenuation", "high attenuation",
    "low-attenuation", "high-attenuation", "heterogeneous", "heterogeneously", "heterogenous", "defect",
    "defects", "filling defect", "laceration", "infarct", "infarction", "infarcts", "ischemia", "ischaemia",
    "necrosis", "necrotic", "steatosis", "fatty", "cirrhosis", "varices", "varix", "collaterals", "abnormality",
    "abnormalities", "abnormal", "irregular", "irregularity", "deformity", "deformation", "atrophy", "atrophic",
    "hypertrophy", "displacement", "displaced", "compression", "compressing", "invasion", "invading",
    "infiltrating", "uptake", "hotspot", "hot spot", "implant", "implants", "rupture", "ruptured", "endoleak",
    "hypoplasia", "hypoplastic", "aplasia", "agenesis", "cavitation", "cavitating", "cavity",
    "hypoenhancing", "hypovascular", "hypervascular", "enhancing lesion", "wall thickening", "scar", "scars",
    "disease", "involvement", "spread", "recurrence", "recurrent", "residual", "dehiscence", "fistula",
    "tract", "debris", "septa", "septations", "loculated", "diverticulitis", "appendicitis", "pancreatitis",
    "cholecystitis", "colitis", "pneumonitis", "nephrocalcinosis", "nephrolithiasis", "cholelithiasis",
    "urolithiasis", "nephromegaly", "hepatomegaly", "splenomegaly", "cardiomegaly", "hepatosplenomegaly",
    "injury", "trauma", "foreign body", "tortuosity", "tortuous", "ectasia", "expansion", "lesional",
    "hypoattenuated", "hypodensed", "spiculated", "lobulated", "bronchiectasis", "metastatic lesions",
    "solid", "hyperemia", "hyperaemia", "pathological", "pathologic", "increased", "decreased", "reduced",
    "reduction", "loss", "widening", "narrowing", "filling", "tumoral", "tumorous", "malformation",
    "anomaly", "variant", "duplication", "ectopic", "malrotation", "occlusive", "thrombotic", "enlarging",
)

#: a regex on LOWER for disease-shaped words not in the lists above
TARGET_SUFFIX_REGEX = (
    r"^(?!(?:diagnosis|prognosis|stoma|soma|aroma|diploma|coma|osmosis|hypnosis|synthesis|"
    r"analysis|emphasis|basis|thesis|genesis|axis|diagnoses|prognoses)$)"
    r"[a-z]{3,}(?:omas?|itis|osis|oses|megaly|pathy|ectasis|ectomy|ectomies)$"
)

#: words that make the preceding "and"/"but" a clause boundary for compound splitting
CLAUSE_VERBS = frozenset(
    {"is", "are", "was", "were", "appears", "appear", "appeared", "shows", "show", "showed", "demonstrates",
     "demonstrated", "reveals", "revealed", "measures", "measured", "contains", "contained", "has", "have",
     "had", "remains", "remain", "remained", "seems", "seem", "looks", "look", "enhances", "enhance",
     "extends", "involves", "compresses", "displaces", "seen", "noted", "identified", "visualized",
     "visualised", "present", "observed", "persists", "persist", "abuts", "surrounds", "encases", "invades",
     "became", "become", "becomes", "showing", "demonstrating", "revealing", "measuring"}
)
#: conjunctions at which a compound sentence may be split
SPLIT_CONJUNCTIONS = frozenset({"and", "but", "while", "whereas", "whilst"})

#: tokenizer special cases: abbreviations that keep their period (never end a sentence
#: unless listed in SENTENCE_FINAL_ABBREVIATIONS and followed by a capitalised word)
ABBREVIATIONS = (
    "approx.", "Approx.", "e.g.", "i.e.", "vs.", "Vs.", "etc.", "fig.", "Fig.", "figs.", "Figs.", "no.", "No.",
    "nr.", "Nr.", "ca.", "cf.", "diam.", "resp.", "incl.", "max.", "min.", "sec.", "yrs.", "yr.", "mo.", "wk.",
    "hr.", "hrs.", "esp.", "pt.", "pts.", "y.o.", "i.v.", "I.V.", "p.o.", "a.k.a.", "Dr.", "dr.", "Mr.", "Mrs.",
    "Ms.", "Prof.", "St.", "ant.", "lat.", "med.", "inf.", "sup.", "prox.", "dist.", "seg.", "Seg.", "ser.",
    "Ser.", "img.", "Img.", "im.", "Im.", "se.", "Se.", "abd.", "Abd.", "cm.", "mm.",
)
SLASH_ABBREVIATIONS = ("s/p", "S/P", "S/p", "w/o", "W/O", "w/", "W/", "h/o", "H/O", "r/o", "R/O", "c/w", "C/W")
#: abbreviations that may end a sentence (boundary when the next word is capitalised)
SENTENCE_FINAL_ABBREVIATIONS = frozenset({"etc.", "min.", "sec.", "yrs.", "yr.", "mo.", "wk.", "hr.", "hrs.", "incl.",
                                          "resp.", "cm.", "mm."})
