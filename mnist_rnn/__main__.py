"""`python -m mnist_rnn`: the `mnist-rnn` command."""

from mnist_rnn.commands.dispatch import main

if __name__ == "__main__":
    main()
