"""`python -m omsjax.metrics --train`: train the digits classifier of the FD metric and ship it; without `--train`,
print the shipped classifier's info (`omsjax.metrics.ship`)."""

from omsjax.metrics.ship import main

if __name__ == "__main__":
    main()
