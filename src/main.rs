fn main() {
    print!("{}", oauthapp_operator::crd::crd_yaml().expect("crd"));
}
