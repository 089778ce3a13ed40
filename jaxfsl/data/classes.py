"""Class names and prompt names of the CDFSL target datasets (METHOD.md).

``class_names`` are the raw names (CSV label / folder name, the TFDS
``ClassLabel`` names) in label order; ``prompt_names`` are the names put in
"a photo of a {}." (the release replaces ``_`` by a space, except for the
datasets with an explicit prompt list).
"""

from __future__ import annotations

CHESTX_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
    "Nodule", "Pneumothorax",
)
# Every label that can appear in Data_Entry_2017.csv; anything else is an
# "unknown label" (a broken or foreign CSV).
CHESTX_ALL_LABELS = frozenset(CHESTX_CLASSES) | {
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Hernia",
    "No Finding", "Pleural_Thickening", "Pneumonia",
}

ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC_PROMPTS = (
    "Melanoma", "Melanocytic Nevus", "Basal Cell Carcinoma",
    "Actinic Keratosis", "Benign Keratosis", "Dermatofibroma",
    "Vascular Lesion",
)

CROP_DISEASE_CLASSES = (
    "Apple___Apple_scab",
    "Apple___Black_rot",
    "Apple___Cedar_apple_rust",
    "Apple___healthy",
    "Blueberry___healthy",
    "Cherry_(including_sour)___Powdery_mildew",
    "Cherry_(including_sour)___healthy",
    "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot",
    "Corn_(maize)___Common_rust_",
    "Corn_(maize)___Northern_Leaf_Blight",
    "Corn_(maize)___healthy",
    "Grape___Black_rot",
    "Grape___Esca_(Black_Measles)",
    "Grape___Leaf_blight_(Isariopsis_Leaf_Spot)",
    "Grape___healthy",
    "Orange___Haunglongbing_(Citrus_greening)",
    "Peach___Bacterial_spot",
    "Peach___healthy",
    "Pepper,_bell___Bacterial_spot",
    "Pepper,_bell___healthy",
    "Potato___Early_blight",
    "Potato___Late_blight",
    "Potato___healthy",
    "Raspberry___healthy",
    "Soybean___healthy",
    "Squash___Powdery_mildew",
    "Strawberry___Leaf_scorch",
    "Strawberry___healthy",
    "Tomato___Bacterial_spot",
    "Tomato___Early_blight",
    "Tomato___Late_blight",
    "Tomato___Leaf_Mold",
    "Tomato___Septoria_leaf_spot",
    "Tomato___Spider_mites Two-spotted_spider_mite",
    "Tomato___Target_Spot",
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus",
    "Tomato___Tomato_mosaic_virus",
    "Tomato___healthy",
)

EUROSAT_CLASSES = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
EUROSAT_PROMPTS = (
    "Annual Crop Land", "Forest", "Herbaceous Vegetation Land",
    "Highway or Road", "Industrial Buildings", "Pasture Land",
    "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake",
)

# The datasets whose class list is fixed (the dataset names of
# ``builders.BUILDERS``), so a config can be checked against it before any
# data is read.
FIXED_CLASSES = {
    "chestx": CHESTX_CLASSES,
    "isic2018": ISIC_CLASSES,
    "crop_disease": CROP_DISEASE_CLASSES,
    "eurosat": EUROSAT_CLASSES,
}


def prompt_name(class_name: str) -> str:
  """The name the release puts in the prompt: ``_`` replaced by a space."""
  return class_name.replace("_", " ")
