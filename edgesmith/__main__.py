"""`python -m edgesmith`: the same command line as the `edgesmith` script."""

from edgesmith.toolchain.cli.app import main

if __name__ == "__main__":
    main()
