"""MLproject entry point `evaluate`: AP, ROC-AUC, Dice of a score volume (`porelab evaluate`)."""


from _common import run

if __name__ == "__main__":
    run("evaluate")
