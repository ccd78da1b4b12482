from memstream.consumers.cli import main

main()
