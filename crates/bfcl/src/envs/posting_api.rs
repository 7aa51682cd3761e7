//! `TwitterAPI`: one account that authenticates, posts tweets (with tags and mentions),
//! retweets, comments, follows users, and searches and counts tweets.
//!
//! Tweets are keyed by `int` IDs (a scenario's string keys are converted on load) and
//! numbered by `tweet_counter`. Comments are keyed by whatever key they were stored under:
//! a scenario's string keys stay strings, so a new comment on tweet `0` starts a separate
//! `0` entry beside a loaded `"0"`.
//!
//! `post_tweet`'s `mentions` defaults to one list shared by every tweet posted without
//! mentions (Python's mutable default argument), so `mention` on one such tweet shows on
//! all of them. This instance keeps that shared list for itself.

use crate::call::Call;
use crate::env::{Default, Environment, LongContext, Param, opt, req, scenario_field};
use crate::envs::message_api::{py_contains, py_increment, py_key, py_lower, py_store_key};
use crate::value::{Dict, Key, Value};
use crate::{dict, vdict};

const CLASS: &str = "TwitterAPI";

const FUNCTIONS: &[&str] = &[
    "authenticate_twitter",
    "posting_get_login_status",
    "post_tweet",
    "retweet",
    "comment",
    "mention",
    "follow_user",
    "list_all_following",
    "unfollow_user",
    "get_tweet",
    "get_user_tweets",
    "search_tweets",
    "get_tweet_comments",
    "get_user_stats",
];

/// A fresh `TwitterAPI`, in its default state.
pub fn new() -> Option<Box<dyn Environment>> {
    Some(Box::new(TwitterApi::default()))
}

/// The `TwitterAPI` state; attributes hold Python values as the scenario gave them.
#[derive(Debug, Clone)]
pub struct TwitterApi {
    username: Value,
    password: Value,
    authenticated: Value,
    tweets: Dict,
    comments: Dict,
    retweets: Dict,
    following_list: Vec<Value>,
    tweet_counter: Value,
    /// The contents of `post_tweet`'s shared default `mentions` list.
    default_mentions: Vec<Value>,
    /// The tweets whose `mentions` is that shared list.
    default_mention_tweets: Vec<Key>,
}

impl std::default::Default for TwitterApi {
    fn default() -> Self {
        let mut api = TwitterApi {
            username: Value::None,
            password: Value::None,
            authenticated: Value::Bool(false),
            tweets: Dict::new(),
            comments: Dict::new(),
            retweets: Dict::new(),
            following_list: Vec::new(),
            tweet_counter: Value::Int(0),
            default_mentions: Vec::new(),
            default_mention_tweets: Vec::new(),
        };
        api.load_scenario(&Dict::new(), None).expect("the default scenario loads");
        api
    }
}

/// `int(s)` for a tweet key: surrounding whitespace, a sign and `_` between digits allowed.
fn py_int(s: &str) -> Result<i64, String> {
    let invalid = || format!("invalid literal for int() with base 10: {}", Value::from(s).repr());
    let t = s.trim();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return Err(invalid());
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if !clean.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: i64 = clean.parse().map_err(|_| invalid())?;
    Ok(if negative { -n } else { n })
}

/// `len(x)`.
fn py_len(v: &Value) -> Result<usize, String> {
    match v {
        Value::List(x) | Value::Tuple(x) | Value::Set(x) => Ok(x.len()),
        Value::Dict(d) => Ok(d.len()),
        Value::Str(s) => Ok(s.chars().count()),
        other => Err(format!("object of type '{}' has no len()", other.type_name())),
    }
}

/// The items of an iterable, as `list.extend` or a `for` loop would take them.
fn py_iter(v: &Value) -> Result<Vec<Value>, String> {
    match v {
        Value::List(x) | Value::Tuple(x) | Value::Set(x) => Ok(x.clone()),
        Value::Dict(d) => Ok(d.keys().map(Key::to_value).collect()),
        Value::Str(s) => Ok(s.chars().map(|c| Value::Str(c.to_string())).collect()),
        other => Err(format!("'{}' object is not iterable", other.type_name())),
    }
}

/// `obj[name]` on a tweet dict.
fn field<'a>(tweet: &'a Value, name: &str) -> Result<&'a Value, String> {
    match tweet {
        Value::Dict(d) => d.get(&Key::from(name)).ok_or_else(|| format!("'{name}'")),
        other => Err(format!("'{}' object is not subscriptable", other.type_name())),
    }
}

fn not_authenticated(action: &str) -> Value {
    vdict! { "error" => format!("User not authenticated. Please authenticate before {action}.") }
}

fn not_found(tweet_id: &Value) -> Value {
    vdict! { "error" => format!("Tweet with ID {} not found.", tweet_id.py_str()) }
}

const NO_ARGS: &[Param] = &[];
const SIG_AUTH: &[Param] = &[req("username"), req("password")];
const SIG_POST: &[Param] = &[req("content"), opt("tags", Default::None), opt("mentions", Default::None)];
const SIG_TWEET: &[Param] = &[req("tweet_id")];
const SIG_COMMENT: &[Param] = &[req("tweet_id"), req("comment_content")];
const SIG_MENTION: &[Param] = &[req("tweet_id"), req("mentioned_usernames")];
const SIG_FOLLOW: &[Param] = &[req("username_to_follow")];
const SIG_UNFOLLOW: &[Param] = &[req("username_to_unfollow")];
const SIG_USERNAME: &[Param] = &[req("username")];
const SIG_KEYWORD: &[Param] = &[req("keyword")];

/// Whether the call passed the `index`-th parameter (`name`) at all.
fn passed(call: &Call, index: usize, name: &str) -> bool {
    call.args.len() > index || call.kwargs.contains_key(name)
}

impl TwitterApi {
    fn authenticated(&self) -> bool {
        self.authenticated.truthy()
    }

    /// The key of the tweet `tweet_id` names, if there is one.
    fn tweet_key(&self, tweet_id: &Value) -> Result<Option<Key>, String> {
        Ok(py_key(tweet_id)?.filter(|k| self.tweets.contains_key(k)))
    }

    fn authenticate_twitter(&mut self, username: &Value, password: &Value) -> Value {
        if *username == self.username && *password == self.password {
            self.authenticated = Value::Bool(true);
            return vdict! { "authentication_status" => true };
        }
        vdict! { "authentication_status" => false }
    }

    fn post_tweet(&mut self, content: &Value, tags: Option<&Value>, mentions: Option<&Value>) -> Result<Value, String> {
        if !self.authenticated() {
            return Ok(vdict! { "error" => "User not authenticated. Please authenticate before posting." });
        }
        let tags = tags.cloned().unwrap_or(Value::List(Vec::new()));
        let shared = mentions.is_none();
        let mentions = mentions.cloned().unwrap_or_else(|| Value::List(self.default_mentions.clone()));
        let tweet = vdict! {
            "id" => self.tweet_counter.clone(),
            "username" => self.username.clone(),
            "content" => content.clone(),
            "tags" => tags,
            "mentions" => mentions,
        };
        let key = py_store_key(&self.tweet_counter)?;
        self.default_mention_tweets.retain(|k| *k != key);
        if shared {
            self.default_mention_tweets.push(key.clone());
        }
        self.tweets.insert(key, tweet.clone());
        self.tweet_counter = py_increment(&self.tweet_counter)?;
        Ok(tweet)
    }

    fn retweet(&mut self, tweet_id: &Value) -> Result<Value, String> {
        if !self.authenticated() {
            return Ok(not_authenticated("retweeting"));
        }
        if self.tweet_key(tweet_id)?.is_none() {
            return Ok(not_found(tweet_id));
        }
        let user = py_store_key(&self.username)?;
        let list = self.retweets.entry(user).or_insert_with(|| Value::List(Vec::new()));
        if py_contains(list, tweet_id)? {
            return Ok(vdict! { "retweet_status" => "Already retweeted" });
        }
        match list {
            Value::List(v) => v.push(tweet_id.clone()),
            other => return Err(format!("'{}' object has no attribute 'append'", other.type_name())),
        }
        Ok(vdict! { "retweet_status" => "Successfully retweeted" })
    }

    fn comment(&mut self, tweet_id: &Value, content: &Value) -> Result<Value, String> {
        if !self.authenticated() {
            return Ok(not_authenticated("commenting"));
        }
        if self.tweet_key(tweet_id)?.is_none() {
            return Ok(not_found(tweet_id));
        }
        let entry = vdict! { "username" => self.username.clone(), "content" => content.clone() };
        let list = self.comments.entry(py_store_key(tweet_id)?).or_insert_with(|| Value::List(Vec::new()));
        match list {
            Value::List(v) => v.push(entry),
            other => return Err(format!("'{}' object has no attribute 'append'", other.type_name())),
        }
        Ok(vdict! { "comment_status" => "Comment added successfully" })
    }

    fn mention(&mut self, tweet_id: &Value, usernames: &Value) -> Result<Value, String> {
        let Some(key) = self.tweet_key(tweet_id)? else {
            return Ok(not_found(tweet_id));
        };
        let current = field(&self.tweets[&key], "mentions")?;
        if !matches!(current, Value::List(_)) {
            return Err(format!("'{}' object has no attribute 'extend'", current.type_name()));
        }
        let added = py_iter(usernames)?;
        if self.default_mention_tweets.contains(&key) {
            self.default_mentions.extend(added);
            let shared = Value::List(self.default_mentions.clone());
            for k in &self.default_mention_tweets {
                if let Some(Value::Dict(tweet)) = self.tweets.get_mut(k) {
                    tweet.insert(Key::from("mentions"), shared.clone());
                }
            }
        } else if let Some(Value::Dict(tweet)) = self.tweets.get_mut(&key)
            && let Some(Value::List(list)) = tweet.get_mut(&Key::from("mentions"))
        {
            list.extend(added);
        }
        Ok(vdict! { "mention_status" => "Users mentioned successfully" })
    }

    fn follow_user(&mut self, user: &Value) -> Value {
        if !self.authenticated() {
            return not_authenticated("following");
        }
        if self.following_list.contains(user) {
            return vdict! { "follow_status" => false };
        }
        self.following_list.push(user.clone());
        vdict! { "follow_status" => true }
    }

    fn list_all_following(&self) -> Value {
        if !self.authenticated() {
            return not_authenticated("listing following");
        }
        vdict! { "following_list" => Value::List(self.following_list.clone()) }
    }

    fn unfollow_user(&mut self, user: &Value) -> Value {
        if !self.authenticated() {
            return not_authenticated("unfollowing");
        }
        let Some(pos) = self.following_list.iter().position(|u| u == user) else {
            return vdict! { "unfollow_status" => false };
        };
        self.following_list.remove(pos);
        vdict! { "unfollow_status" => true }
    }

    fn get_tweet(&self, tweet_id: &Value) -> Result<Value, String> {
        Ok(match self.tweet_key(tweet_id)? {
            Some(key) => self.tweets[&key].clone(),
            None => not_found(tweet_id),
        })
    }

    /// The tweets whose author is `username`, in posting order.
    fn tweets_by(&self, username: &Value) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for tweet in self.tweets.values() {
            if field(tweet, "username")? == username {
                out.push(tweet.clone());
            }
        }
        Ok(out)
    }

    fn search_tweets(&self, keyword: &Value) -> Result<Value, String> {
        let mut out = Vec::new();
        for tweet in self.tweets.values() {
            let keyword = py_lower(keyword)?;
            let mut hit = py_lower(field(tweet, "content")?)?.contains(&keyword);
            if !hit {
                let tags = py_iter(field(tweet, "tags")?)?.iter().map(py_lower).collect::<Result<Vec<_>, _>>()?;
                hit = tags.contains(&keyword);
            }
            if hit {
                out.push(tweet.clone());
            }
        }
        Ok(Value::List(out))
    }

    fn get_tweet_comments(&self, tweet_id: &Value) -> Result<Value, String> {
        if self.tweet_key(tweet_id)?.is_none() {
            return Ok(not_found(tweet_id));
        }
        let key = py_store_key(tweet_id)?;
        Ok(self.comments.get(&key).cloned().unwrap_or(Value::List(Vec::new())))
    }

    fn get_user_stats(&self, username: &Value) -> Result<Value, String> {
        let tweet_count = self.tweets_by(username)?.len();
        let following_count = if *username == self.username { self.following_list.len() } else { 0 };
        let retweet_count = match py_key(username)?.and_then(|k| self.retweets.get(&k)) {
            Some(list) => py_len(list)?,
            None => 0,
        };
        Ok(vdict! {
            "tweet_count" => tweet_count,
            "following_count" => following_count,
            "retweet_count" => retweet_count,
        })
    }
}

impl Environment for TwitterApi {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn load_scenario(&mut self, scenario: &Dict, _long_context: Option<&LongContext>) -> Result<(), String> {
        let get = |key: &str, default: Value| scenario_field(scenario, key).cloned().unwrap_or(default);
        let dict_of = |key: &str| match get(key, Value::Dict(Dict::new())) {
            Value::Dict(d) => Ok(d),
            other => Err(format!("{key} must be a dict, got {}", other.type_name())),
        };
        self.username = get("username", Value::from("john"));
        self.password = get("password", Value::from("john123"));
        self.authenticated = get("authenticated", Value::Bool(false));
        let mut tweets = Dict::new();
        for (k, v) in dict_of("tweets")? {
            let id = match k {
                Key::Int(i) => i,
                Key::Str(s) => py_int(&s)?,
            };
            tweets.insert(Key::Int(id), v);
        }
        self.tweets = tweets;
        self.comments = dict_of("comments")?;
        self.retweets = dict_of("retweets")?;
        self.following_list = match get("following_list", Value::from(vec!["alice", "bob"])) {
            Value::List(v) => v,
            other => return Err(format!("following_list must be a list, got {}", other.type_name())),
        };
        self.tweet_counter = get("tweet_counter", Value::Int(0));
        self.default_mentions.clear();
        self.default_mention_tweets.clear();
        Ok(())
    }

    fn functions(&self) -> &'static [&'static str] {
        FUNCTIONS
    }

    fn call(&mut self, call: &Call) -> Result<Value, String> {
        match call.name.as_str() {
            "authenticate_twitter" => {
                let b = crate::env::bind(CLASS, call, SIG_AUTH)?;
                Ok(self.authenticate_twitter(b.get("username"), b.get("password")))
            }
            "posting_get_login_status" => {
                crate::env::bind(CLASS, call, NO_ARGS)?;
                Ok(vdict! { "login_status" => self.authenticated() })
            }
            "post_tweet" => {
                let b = crate::env::bind(CLASS, call, SIG_POST)?;
                let tags = passed(call, 1, "tags").then(|| b.get("tags"));
                let mentions = passed(call, 2, "mentions").then(|| b.get("mentions"));
                self.post_tweet(b.get("content"), tags, mentions)
            }
            "retweet" => {
                let b = crate::env::bind(CLASS, call, SIG_TWEET)?;
                self.retweet(b.get("tweet_id"))
            }
            "comment" => {
                let b = crate::env::bind(CLASS, call, SIG_COMMENT)?;
                self.comment(b.get("tweet_id"), b.get("comment_content"))
            }
            "mention" => {
                let b = crate::env::bind(CLASS, call, SIG_MENTION)?;
                self.mention(b.get("tweet_id"), b.get("mentioned_usernames"))
            }
            "follow_user" => {
                let b = crate::env::bind(CLASS, call, SIG_FOLLOW)?;
                Ok(self.follow_user(b.get("username_to_follow")))
            }
            "list_all_following" => {
                crate::env::bind(CLASS, call, NO_ARGS)?;
                Ok(self.list_all_following())
            }
            "unfollow_user" => {
                let b = crate::env::bind(CLASS, call, SIG_UNFOLLOW)?;
                Ok(self.unfollow_user(b.get("username_to_unfollow")))
            }
            "get_tweet" => {
                let b = crate::env::bind(CLASS, call, SIG_TWEET)?;
                self.get_tweet(b.get("tweet_id"))
            }
            "get_user_tweets" => {
                let b = crate::env::bind(CLASS, call, SIG_USERNAME)?;
                self.tweets_by(b.get("username")).map(Value::List)
            }
            "search_tweets" => {
                let b = crate::env::bind(CLASS, call, SIG_KEYWORD)?;
                self.search_tweets(b.get("keyword"))
            }
            "get_tweet_comments" => {
                let b = crate::env::bind(CLASS, call, SIG_TWEET)?;
                self.get_tweet_comments(b.get("tweet_id"))
            }
            "get_user_stats" => {
                let b = crate::env::bind(CLASS, call, SIG_USERNAME)?;
                self.get_user_stats(b.get("username"))
            }
            other => Err(format!("'{CLASS}' object has no attribute '{other}'")),
        }
    }

    fn state(&self) -> Dict {
        dict! {
            "username" => self.username.clone(),
            "password" => self.password.clone(),
            "authenticated" => self.authenticated.clone(),
            "tweets" => Value::Dict(self.tweets.clone()),
            "comments" => Value::Dict(self.comments.clone()),
            "retweets" => Value::Dict(self.retweets.clone()),
            "following_list" => Value::List(self.following_list.clone()),
            "tweet_counter" => self.tweet_counter.clone(),
        }
    }

    fn box_clone(&self) -> Box<dyn Environment> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::parse_calls;

    fn run(api: &mut TwitterApi, text: &str) -> String {
        let call = parse_calls(text).unwrap().remove(0);
        match api.call(&call) {
            Ok(v) => v.to_result_string(),
            Err(e) => format!("Error during execution: {e}"),
        }
    }

    fn loaded(json: &str) -> TwitterApi {
        let mut api = TwitterApi::default();
        let scenario = Value::from_json(&serde_json::from_str(json).unwrap());
        api.load_scenario(scenario.as_dict().unwrap(), None).unwrap();
        api
    }

    #[test]
    fn default_state_matches_python() {
        let api = TwitterApi::default();
        assert_eq!(
            Value::Dict(api.state()).repr(),
            "{'username': 'john', 'password': 'john123', 'authenticated': False, 'tweets': {}, 'comments': {}, \
             'retweets': {}, 'following_list': ['alice', 'bob'], 'tweet_counter': 0}"
        );
    }

    #[test]
    fn authentication_gates_posting() {
        let mut api = TwitterApi::default();
        assert_eq!(
            run(&mut api, "post_tweet(content='x')"),
            r#"{"error": "User not authenticated. Please authenticate before posting."}"#
        );
        assert_eq!(
            run(&mut api, "list_all_following()"),
            r#"{"error": "User not authenticated. Please authenticate before listing following."}"#
        );
        assert_eq!(
            run(&mut api, "authenticate_twitter(username='john', password='no')"),
            r#"{"authentication_status": false}"#
        );
        assert_eq!(
            run(&mut api, "authenticate_twitter(username='john', password='john123')"),
            r#"{"authentication_status": true}"#
        );
        assert_eq!(run(&mut api, "posting_get_login_status()"), r#"{"login_status": true}"#);
        assert_eq!(
            run(&mut api, "post_tweet(content='first', tags=['#a'], mentions=['@b'])"),
            r##"{"id": 0, "username": "john", "content": "first", "tags": ["#a"], "mentions": ["@b"]}"##
        );
        assert_eq!(
            run(&mut api, "get_user_stats(username='john')"),
            r#"{"tweet_count": 1, "following_count": 2, "retweet_count": 0}"#
        );
        assert_eq!(api.tweet_counter, Value::Int(1));
        assert!(api.tweets.contains_key(&Key::Int(0)));
    }

    #[test]
    fn comments_keep_loaded_string_keys() {
        let mut api = loaded(
            r#"{"authenticated": true, "tweets": {"0": {"id": 0, "username": "a", "content": "c", "tags": [], "mentions": []}},
                "comments": {"0": [{"username": "b", "content": "hi"}]}}"#,
        );
        assert_eq!(run(&mut api, "get_tweet_comments(tweet_id=0)"), "[]");
        assert_eq!(
            run(&mut api, "comment(tweet_id=0, comment_content='new')"),
            r#"{"comment_status": "Comment added successfully"}"#
        );
        assert_eq!(run(&mut api, "get_tweet_comments(tweet_id=0)"), "[{'username': 'john', 'content': 'new'}]");
        assert_eq!(
            Value::Dict(api.comments.clone()).repr(),
            "{'0': [{'username': 'b', 'content': 'hi'}], 0: [{'username': 'john', 'content': 'new'}]}"
        );
        assert_eq!(
            run(&mut api, "comment(tweet_id=7, comment_content='x')"),
            r#"{"error": "Tweet with ID 7 not found."}"#
        );
        assert_eq!(run(&mut api, "retweet(tweet_id=0)"), r#"{"retweet_status": "Successfully retweeted"}"#);
        assert_eq!(run(&mut api, "retweet(tweet_id=0)"), r#"{"retweet_status": "Already retweeted"}"#);
    }

    #[test]
    fn default_mentions_are_shared() {
        let mut api = loaded(r#"{"authenticated": true}"#);
        run(&mut api, "post_tweet(content='a')");
        run(&mut api, "post_tweet(content='b', tags=['#b'])");
        run(&mut api, "post_tweet(content='c', mentions=['@own'])");
        assert_eq!(
            run(&mut api, "mention(tweet_id=0, mentioned_usernames=['@x'])"),
            r#"{"mention_status": "Users mentioned successfully"}"#
        );
        assert_eq!(
            run(&mut api, "get_tweet(tweet_id=1)"),
            r##"{"id": 1, "username": "john", "content": "b", "tags": ["#b"], "mentions": ["@x"]}"##
        );
        assert_eq!(
            run(&mut api, "post_tweet(content='d')"),
            r#"{"id": 3, "username": "john", "content": "d", "tags": [], "mentions": ["@x"]}"#
        );
        run(&mut api, "mention(tweet_id=2, mentioned_usernames=['@y'])");
        assert_eq!(
            run(&mut api, "get_tweet(tweet_id=2)"),
            r#"{"id": 2, "username": "john", "content": "c", "tags": [], "mentions": ["@own", "@y"]}"#
        );
        assert_eq!(
            run(&mut api, "mention(tweet_id=9, mentioned_usernames=['@y'])"),
            r#"{"error": "Tweet with ID 9 not found."}"#
        );
    }

    #[test]
    fn search_and_key_conversion() {
        let mut api = loaded(
            r##"{"tweets": {" 5 ": {"id": 5, "username": "x", "content": "Rust is fun", "tags": ["#RustLang"], "mentions": []},
                          "1_0": {"id": 10, "username": "y", "content": "ten", "tags": [], "mentions": []}}}"##,
        );
        assert_eq!(api.tweets.keys().cloned().collect::<Vec<_>>(), vec![Key::Int(5), Key::Int(10)]);
        assert_eq!(run(&mut api, "search_tweets(keyword='#rustlang')"), run(&mut api, "get_user_tweets(username='x')"));
        assert_eq!(run(&mut api, "search_tweets(keyword='#Rust')"), "[]");
        assert_eq!(run(&mut api, "get_tweet(tweet_id='5')"), r#"{"error": "Tweet with ID 5 not found."}"#);
        assert_eq!(py_int("abc").unwrap_err(), "invalid literal for int() with base 10: 'abc'");
        assert_eq!(py_int("-0_1").unwrap(), -1);
        assert!(py_int("1__0").is_err());
    }

    #[test]
    fn argument_errors_match_python() {
        let mut api = TwitterApi::default();
        assert_eq!(
            run(&mut api, "post_tweet('a', [], [], 1)"),
            "Error during execution: TwitterAPI.post_tweet() takes from 2 to 4 positional arguments but 5 were given"
        );
        assert_eq!(
            run(&mut api, "post_tweet('a', [], [], 1, content='b')"),
            "Error during execution: TwitterAPI.post_tweet() got multiple values for argument 'content'"
        );
        assert_eq!(
            run(&mut api, "get_tweet(1, 2)"),
            "Error during execution: TwitterAPI.get_tweet() takes 2 positional arguments but 3 were given"
        );
    }
}
