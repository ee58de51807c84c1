"""MLproject entry point `complexity`: parameters, MACs and memory of the ten nets (`porelab complexity`)."""


from _common import run

if __name__ == "__main__":
    run("complexity")
