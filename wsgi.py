from gatehouse import create_app

app = create_app()
